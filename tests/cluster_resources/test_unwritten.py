"""Writing out preallocated extents: on real ext4 (the machine's /var/tmp), the
content stays what it was and no unwritten extent is left; where there is no
FIEMAP (tmpfs) nothing is touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tandem.cluster.resources.unwritten import unwritten_ranges, write_out_unwritten


@pytest.fixture
def ext4_dir():
    d = Path("/var/tmp") / f"tandem-unwritten-{os.getpid()}"
    d.mkdir()
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def _ranges(path: Path) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return unwritten_ranges(fd)
    finally:
        os.close(fd)


def test_preallocated_ranges_are_written_out_and_the_content_is_unchanged(ext4_dir):
    path = ext4_dir / "ib_logfile0"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 6 << 20)
        os.pwrite(fd, b"redo" * 1024, 1 << 20)  # one written block amid preallocation
        os.pwrite(fd, b"tail" * 1024, (6 << 20) - 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
    before = path.read_bytes()
    gaps = _ranges(path)
    assert gaps == [(0, 1 << 20), ((1 << 20) + 4096, (5 << 20) - 8192)], gaps
    assert write_out_unwritten(path) == (6 << 20) - 8192
    assert _ranges(path) == []
    assert path.read_bytes() == before
    assert write_out_unwritten(path) == 0  # nothing left: nothing written


def test_nothing_to_do_without_fiemap_or_without_the_file(ext4_dir):
    assert write_out_unwritten(ext4_dir / "missing") == 0
    shm = Path("/dev/shm") / f"tandem-unwritten-{os.getpid()}"
    try:
        with open(shm, "wb") as f:  # preallocated, as InnoDB makes it, but tmpfs has no FIEMAP
            os.posix_fallocate(f.fileno(), 0, 1 << 20)
            f.write(b"x" * 8192)
        assert write_out_unwritten(shm) == 0
        assert shm.read_bytes() == b"x" * 8192 + bytes((1 << 20) - 8192)
    finally:
        shm.unlink(missing_ok=True)
    os.mkfifo(ext4_dir / "fifo")
    assert write_out_unwritten(ext4_dir / "fifo") == 0
