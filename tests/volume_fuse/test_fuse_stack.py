"""ext4 on loop(direct-io) on the FUSE file: the primary's real stack."""

from __future__ import annotations

import mmap
import os
import threading
import time

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


class GatedBackend(FileBackend):
    """A file backend whose writes wait at a gate, like a volume holding I/O
    while it fences its peer."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__(path, size)
        self.gate = threading.Event()
        self.held = 0
        self._count = threading.Lock()

    def write(self, offset: int, data: memoryview) -> None:
        with self._count:
            self.held += 1
        self.gate.wait(60)
        super().write(offset, data)


def _direct_write(dev: str, offset: int) -> None:
    buf = mmap.mmap(-1, 4096)
    buf.write(b"w" * 4096)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwrite(fd, buf, offset)
    finally:
        os.close(fd)
        buf.close()


def test_metadata_requests_are_answered_while_every_write_is_held(backing: str, mnt: str) -> None:
    """Held writes of the loop device occupy at most max_background workers; the
    spare ones still answer stat/open of the device file (a paused volume must
    not freeze every tool and agent that looks at it)."""
    backend = GatedBackend(backing, SIZE)
    srv = FuseServer(backend, mnt)
    writers: list[threading.Thread] = []
    try:
        srv.start()
        with loop_device(srv.path) as dev:
            writers = [threading.Thread(target=_direct_write, args=(dev, i * 65536), daemon=True)
                       for i in range(srv.max_background + 8)]
            for t in writers:
                t.start()
            deadline = time.monotonic() + 10
            while backend.held < min(srv.max_background, srv.threads) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert backend.held >= min(srv.max_background, srv.threads)
            time.sleep(0.2)  # let the rest queue in the kernel
            answered: dict[str, object] = {}

            def look() -> None:
                answered["size"] = os.stat(srv.path).st_size
                fd = os.open(srv.path, os.O_RDONLY)
                os.close(fd)
                answered["open"] = True

            probe = threading.Thread(target=look, daemon=True)
            probe.start()
            probe.join(5)
            hung = probe.is_alive()
            backend.gate.set()
            for t in writers:
                t.join(30)
            probe.join(10)
            assert not hung, "stat/open of the device file hung behind held writes"
            assert answered == {"size": SIZE, "open": True}
            assert not any(t.is_alive() for t in writers)
    finally:
        backend.gate.set()
        for t in writers:
            t.join(30)
        srv.stop()
        backend.close()
