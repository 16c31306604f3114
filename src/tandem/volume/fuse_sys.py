"""Thin ctypes wrappers for the few syscalls the raw FUSE server needs.

Why ctypes and not libfuse/fusermount: we are root, so the server can call
``mount(2)`` itself with the ``/dev/fuse`` fd in the options. That removes the
setuid helper and libfuse from the picture and lets us pick every mount option.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import struct
import tempfile

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
PR_SET_IO_FLUSHER = 57
# _IOR(229, 0, uint32_t): attach a new /dev/fuse fd to an existing connection.
FUSE_DEV_IOC_CLONE = 0x8004E500

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


def _check(rc: int, what: str, path: str | None = None) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def fuse_mount(fd: int, mountpoint: str, *, fstype: str, source: str, max_read: int,
               uid: int = 0, gid: int = 0) -> None:
    """Mount a FUSE filesystem served on ``fd`` at ``mountpoint``.

    ``default_permissions`` lets the kernel check mode bits itself (no ACCESS
    round trips); ``allow_other`` lets MariaDB, loop and fio, whatever their uid,
    use the file.
    """
    opts = (f"fd={fd},rootmode=40000,user_id={uid},group_id={gid},"
            f"allow_other,default_permissions,max_read={max_read}")
    rc = _libc.mount(source.encode(), os.fsencode(mountpoint), f"fuse.{fstype}".encode(),
                     MS_NOSUID | MS_NODEV, opts.encode())
    _check(rc, "mount", mountpoint)


def umount(mountpoint: str, *, lazy: bool = False) -> None:
    """``umount2``; raises OSError (EINVAL: not mounted, EBUSY: in use)."""
    rc = _libc.umount2(os.fsencode(mountpoint), MNT_DETACH if lazy else 0)
    _check(rc, "umount2", mountpoint)


def clone_fd(session_fd: int) -> int:
    """Open a new /dev/fuse fd bound to the same connection as ``session_fd``.

    Each worker thread gets its own fd so replies go back on the fd the request
    was read from (the kernel keeps its "processing" list per device fd).
    """
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FUSE_DEV_IOC_CLONE, struct.pack("I", session_fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def set_io_flusher() -> bool:
    """Mark the calling *thread* PR_SET_IO_FLUSHER; False if not permitted.

    The flag (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE) lives in the task flags, so
    every worker thread sets it for itself. Without it, memory reclaim inside the
    daemon can wait on writeback of pages of ext4-on-loop-on-this-FUSE-file, which
    needs the daemon: a deadlock under memory pressure. Needs CAP_SYS_RESOURCE.
    """
    return _libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0


def abort_connection(conn_id: int) -> None:
    """Write ``abort`` for FUSE connection ``conn_id`` (minor of the mount's st_dev).

    Uses /sys/fs/fuse/connections when fusectl is mounted there; otherwise mounts
    fusectl on a private temp dir for the moment and removes it again.
    """
    sysdir = "/sys/fs/fuse/connections"
    if os.path.exists(f"{sysdir}/{conn_id}/abort"):
        _write_abort(f"{sysdir}/{conn_id}/abort")
        return
    tmp = tempfile.mkdtemp(prefix="tandem-fusectl-", dir="/var/tmp")
    try:
        rc = _libc.mount(b"fusectl", tmp.encode(), b"fusectl", 0, None)
        _check(rc, "mount fusectl", tmp)
        try:
            _write_abort(f"{tmp}/{conn_id}/abort")
        finally:
            umount(tmp)
    finally:
        os.rmdir(tmp)


def _write_abort(path: str) -> None:
    with open(path, "w") as f:
        f.write("1")


def mounted_fs_type(mountpoint: str) -> str | None:
    """Filesystem type mounted exactly at ``mountpoint`` (last entry wins), or None."""
    target = os.path.realpath(mountpoint)
    found = None
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and _unescape(parts[1]) == target:
                found = parts[2]
    return found


def _unescape(field: str) -> str:
    return (field.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))
