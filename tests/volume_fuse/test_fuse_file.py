"""The FUSE file behaves like a fixed-size disk: stat, I/O paths, errors, bounds."""

from __future__ import annotations

import errno
import mmap
import os
import stat
import threading

import pytest

from tandem.volume.fuse_raw import BlockBackend, FileBackend, FuseServer

from .conftest import SIZE


def test_stat_listing_and_metadata_ops(server: FuseServer) -> None:
    st = os.stat(server.path)
    assert stat.S_ISREG(st.st_mode) and st.st_size == SIZE
    assert os.listdir(server.mountpoint) == ["disk"]
    assert os.statvfs(server.mountpoint).f_bsize == 4096
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(server.mountpoint, "other"))
    os.truncate(server.path, SIZE)  # no-op size change is accepted
    with pytest.raises(OSError) as e:
        os.truncate(server.path, SIZE // 2)
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError):
        os.open(server.path, os.O_WRONLY | os.O_TRUNC)  # would be a truncation
    with pytest.raises(OSError):
        os.getxattr(server.path, "user.x")
    assert os.stat(server.path).st_size == SIZE
    assert server.proto_minor >= 28


def test_buffered_and_direct_io_reach_the_backing_file(server: FuseServer,
                                                       backing: str) -> None:
    fd = os.open(server.path, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"hello world", 12345) == 11
        assert os.pread(fd, 11, 12345) == b"hello world"
        os.fsync(fd)
    finally:
        os.close(fd)
    payload = os.urandom(3 << 20)  # spans several 1 MiB FUSE requests
    buf = mmap.mmap(-1, len(payload))
    buf[:] = payload
    fd = os.open(server.path, os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwritev(fd, [buf], 8 << 20) == len(payload)
        os.fdatasync(fd)
        back = mmap.mmap(-1, len(payload))
        assert os.preadv(fd, [back], 8 << 20) == len(payload)
        assert back[:] == payload
    finally:
        os.close(fd)
    with open(backing, "rb") as f:
        f.seek(12345)
        assert f.read(11) == b"hello world"
        f.seek(8 << 20)
        assert f.read(len(payload)) == payload


def test_bounds_of_the_fixed_size_file(server: FuseServer) -> None:
    fd = os.open(server.path, os.O_RDWR)
    try:
        assert os.pread(fd, 100, SIZE - 10) == bytes(10)
        assert os.pread(fd, 100, SIZE) == b""
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x" * 10, SIZE)
        assert e.value.errno == errno.ENOSPC
        assert os.pwrite(fd, b"y" * 10, SIZE - 4) == 4  # short write at the end
        assert os.stat(server.path).st_size == SIZE
    finally:
        os.close(fd)


class FailingBackend(FileBackend):
    """Fails I/O touching [bad_start, bad_end) with EIO, like a dying disk."""

    bad_start = 1 << 20
    bad_end = 2 << 20
    fail_flush = False

    def _bad(self, offset: int, length: int) -> bool:
        return offset < self.bad_end and offset + length > self.bad_start

    def read(self, offset: int, length: int) -> bytes:
        if self._bad(offset, length):
            raise OSError(errno.EIO, "injected")
        return super().read(offset, length)

    def write(self, offset: int, data: memoryview) -> None:
        if self._bad(offset, len(data)):
            raise OSError(errno.EIO, "injected")
        if offset == 0 and bytes(data[:4]) == b"BUG!":
            raise ValueError("a backend bug is answered with EIO, not success")
        super().write(offset, data)

    def flush(self) -> None:
        if self.fail_flush:
            raise OSError(errno.EIO, "injected")
        super().flush()


def test_backend_eio_reaches_the_application(backing: str, mnt: str) -> None:
    backend = FailingBackend(backing, SIZE)
    assert isinstance(backend, BlockBackend)
    try:
        with FuseServer(backend, mnt, threads=2) as srv:
            fd = os.open(srv.path, os.O_RDWR)
            try:
                for off in (1 << 20, (1 << 20) + 4096, (1 << 20) - 100):
                    with pytest.raises(OSError) as e:
                        os.pwrite(fd, b"z" * 4096, off)
                    assert e.value.errno == errno.EIO
                with pytest.raises(OSError) as e:
                    os.pread(fd, 4096, 1 << 20)
                assert e.value.errno == errno.EIO
                with pytest.raises(OSError) as e:
                    os.pwrite(fd, b"BUG!", 0)
                assert e.value.errno == errno.EIO
                assert os.pwrite(fd, b"ok", 3 << 20) == 2  # outside the range: fine
                os.fsync(fd)
                backend.fail_flush = True
                with pytest.raises(OSError) as e:
                    os.fsync(fd)
                assert e.value.errno == errno.EIO
            finally:
                os.close(fd)
    finally:
        backend.close()
    with open(backing, "rb") as f:
        f.seek(1 << 20)
        assert f.read(8192) == bytes(8192)  # nothing of the failed writes landed


def test_concurrent_writers(server: FuseServer, backing: str) -> None:
    nthreads, per_thread, block = 6, 64, 16384
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            fd = os.open(server.path, os.O_RDWR | os.O_DIRECT)
            buf = mmap.mmap(-1, block)
            try:
                for i in range(per_thread):
                    buf[:] = bytes([k + 1]) * (block - 4) + i.to_bytes(4, "big")
                    off = (k * per_thread + i) * block
                    assert os.pwritev(fd, [buf], off) == block
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with open(backing, "rb") as f:
        for k in range(nthreads):
            for i in range(per_thread):
                f.seek((k * per_thread + i) * block)
                data = f.read(block)
                assert data == bytes([k + 1]) * (block - 4) + i.to_bytes(4, "big")
    assert server.stats()["WRITE"] >= nthreads * per_thread


class AsyncBackend(FileBackend):
    """Writes locally at once and completes each write from another thread, once
    the test releases it (as the replicated volume does when the peer acks)."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__(path, size)
        self.pending: list = []
        self.arrived = threading.Event()

    def write_async(self, offset: int, data: memoryview, complete) -> None:  # noqa: ANN001
        self.write(offset, data)
        self.pending.append(complete)
        self.arrived.set()

    def complete_all(self, error: OSError | None = None) -> None:
        pending, self.pending = self.pending, []
        self.arrived.clear()
        for complete in pending:
            threading.Thread(target=complete, args=(error,)).start()


def test_asynchronous_writes_free_the_worker_and_complete_from_another_thread(
        backing: str, mnt: str) -> None:
    backend = AsyncBackend(backing, SIZE)
    results: list = []

    def write(off: int) -> None:
        fd = os.open(srv.path, os.O_RDWR | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)
        buf[:] = b"a" * 4096
        try:
            results.append(os.pwritev(fd, [buf], off))
        except OSError as e:
            results.append(e.errno)
        finally:
            os.close(fd)

    try:
        with FuseServer(backend, mnt, threads=1) as srv:
            writer = threading.Thread(target=write, args=(8192,))
            writer.start()
            assert backend.arrived.wait(10)
            # The only worker is free while the write waits: a read is served.
            fd = os.open(srv.path, os.O_RDONLY)
            try:
                assert os.pread(fd, 4096, 8192) == b"a" * 4096
            finally:
                os.close(fd)
            writer.join(0.2)
            assert writer.is_alive() and not results  # not complete before its completion
            backend.complete_all()
            writer.join(10)
            assert results == [4096]
            writer = threading.Thread(target=write, args=(16384,))
            writer.start()
            assert backend.arrived.wait(10)
            backend.complete_all(OSError(errno.EIO, "peer lost"))
            writer.join(10)
            assert results == [4096, errno.EIO]
            writer = threading.Thread(target=write, args=(0,))
            writer.start()
            assert backend.arrived.wait(10)
            late = backend.pending
            srv.stop(timeout=1.0)  # busy (the writer has it open): the connection is aborted
        writer.join(10)
        assert not writer.is_alive() and len(results) == 3 and results[2] != 4096
        for complete in late:  # completed after stop: no reply into a closed fd
            complete(None)
    finally:
        backend.close()
