"""ext4 on loop(direct-io) on the FUSE file: the primary's real stack."""

from __future__ import annotations

import os

from tandem.volume.fuse_raw import FileBackend, FuseServer
from tandem.volume.fuse_stack import ext4_mount, loop_device, mkfs_ext4

from .conftest import SIZE


def _files() -> dict[str, bytes]:
    return {f"f{i}.bin": os.urandom(1000 + i * 37_000) for i in range(8)}


def test_ext4_on_loop_persists_in_the_backing_file(workdir: str, mnt: str,
                                                   backing: str) -> None:
    ext = os.path.join(workdir, "ext4")
    os.mkdir(ext)
    files = _files()
    backend = FileBackend(backing, SIZE)
    try:
        with FuseServer(backend, mnt, threads=4) as srv, loop_device(srv.path) as dev:
            name = os.path.basename(dev)
            with open(f"/sys/block/{name}/loop/dio") as f:
                assert f.read().strip() == "1"  # loop really does direct I/O
            mkfs_ext4(dev)
            with ext4_mount(dev, ext):
                os.mkdir(os.path.join(ext, "d"))
                for fname, data in files.items():
                    with open(os.path.join(ext, "d", fname), "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                os.sync()
            stats = srv.stats()
            assert stats["WRITE"] > 0 and stats["FSYNC"] > 0
    finally:
        backend.close()
    assert os.path.getsize(backing) == SIZE

    backend = FileBackend(backing)  # fresh server, fresh loop, fresh mount
    try:
        with (FuseServer(backend, mnt, threads=2) as srv, loop_device(srv.path) as dev,
              ext4_mount(dev, ext)):
            for fname, data in files.items():
                with open(os.path.join(ext, "d", fname), "rb") as f:
                    assert f.read() == data
    finally:
        backend.close()
