"""Start/stop hygiene: no mount, thread or fd left behind, even when the kernel
side or the daemon went away first."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading

import pytest

from tandem.volume.fuse_raw import FileBackend, FuseServer, cleanup_stale_mount
from tandem.volume.fuse_sys import mounted_fs_type, umount

from .conftest import SIZE


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_stop_is_clean_and_idempotent(backing: str, mnt: str) -> None:
    backend = FileBackend(backing, SIZE)
    fds, threads = _fd_count(), threading.active_count()
    try:
        srv = FuseServer(backend, mnt, threads=5)
        srv.start()
        assert mounted_fs_type(mnt) == "fuse.tandem"
        assert threading.active_count() == threads + 5
        srv.stop()
        srv.stop()
        assert mounted_fs_type(mnt) is None
        assert threading.active_count() == threads
        assert _fd_count() == fds
    finally:
        backend.close()


def test_stop_after_the_mount_was_removed_underneath(backing: str, mnt: str) -> None:
    backend = FileBackend(backing, SIZE)
    try:
        srv = FuseServer(backend, mnt, threads=3)
        srv.start()
        umount(mnt)  # someone else unmounted it: workers see ENODEV
        srv.stop(timeout=5)
        assert mounted_fs_type(mnt) is None
    finally:
        backend.close()


def test_start_refuses_a_missing_mountpoint(backing: str, workdir: str) -> None:
    backend = FileBackend(backing, SIZE)
    try:
        with pytest.raises(FileNotFoundError):
            FuseServer(backend, os.path.join(workdir, "nope")).start()
    finally:
        backend.close()


def test_killed_daemon_leaves_enotconn_and_umount_lazy_cleans(backing: str,
                                                              mnt: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.volume.fuse_raw", backing, mnt,
         "--size", str(SIZE), "--threads", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("serving")
        assert os.stat(os.path.join(mnt, "disk")).st_size == SIZE
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with pytest.raises(OSError) as e:
            os.open(os.path.join(mnt, "disk"), os.O_RDONLY)  # stat would be cached
        assert e.value.errno == errno.ENOTCONN
        assert cleanup_stale_mount(mnt)
        assert mounted_fs_type(mnt) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_daemon_stops_cleanly_on_sigterm(backing: str, mnt: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.volume.fuse_raw", backing, mnt,
         "--size", str(SIZE), "--threads", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("serving")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert mounted_fs_type(mnt) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_stop_while_a_loop_device_still_holds_the_file(backing: str, mnt: str) -> None:
    """Busy mount: stop() unmounts lazily, then aborts the connection so the
    workers exit; the loop device sees EIO until it is detached."""
    from tandem.volume.fuse_stack import loop_device

    backend = FileBackend(backing, SIZE)
    srv = FuseServer(backend, mnt, threads=3)
    try:
        srv.start()
        with loop_device(srv.path) as dev:
            srv.stop(timeout=1)
            assert mounted_fs_type(mnt) is None
            assert not any(t.name.startswith("fuse-") for t in threading.enumerate())
            fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
            try:
                with pytest.raises(OSError):
                    os.pread(fd, 4096, 0)
            finally:
                os.close(fd)
    finally:
        srv.stop()
        backend.close()
