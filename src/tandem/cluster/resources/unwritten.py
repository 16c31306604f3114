"""Write out a file's preallocated (unwritten) extents before a server uses it.

Why: MariaDB creates its redo log (``ib_logfile0``) with fallocate, so until
the log has wrapped once every redo write lands in an unwritten extent. ext4
then converts the extent when the write completes, and the fdatasync that
makes the commit durable has metadata to journal: one more device write in a
row per commit. On a replicated volume each of those writes waits for the peer
(traced: a commit on a fresh datadir cost 4 writes in a row with ext4's
fast_commit, 3 once the log was written out; 4.2 on average without fast_commit,
4.0 once written out). Writing the unwritten ranges once, before the
server starts, makes them ordinary written blocks.

The bytes written are the bytes read back (an unwritten extent reads as zeros),
so the file's content is the same before, during and after, also if this is cut
off halfway. It must never run while the server has the file open, nor beside a
start that could spawn one: a read and write-back would undo a write made in
between. The MariaDB resource therefore does it only on a fresh install's staging
copy, in the thread that then moves the install into place. A filesystem without FIEMAP
(tmpfs, FUSE) has nothing to convert and is left alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from pathlib import Path

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1  # flush delayed allocations first, so the map is current
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNWRITTEN = 0x800
_HEAD = struct.Struct("=QQIIII")  # start, length, flags, mapped_extents, extent_count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, reserved64[2], flags, reserved[3]
_BATCH = 64  # extents asked for per ioctl
CHUNK = 1 << 20
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTTY)


def unwritten_ranges(fd: int) -> list[tuple[int, int]]:
    """(offset, length) of the file's unwritten extents, clipped to its size;
    empty where the filesystem has no FIEMAP."""
    size = os.fstat(fd).st_size
    found: list[tuple[int, int]] = []
    start = 0
    while start < size:
        request = bytearray(_HEAD.size + _BATCH * _EXTENT.size)
        _HEAD.pack_into(request, 0, start, size - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return []
            raise
        mapped = _HEAD.unpack_from(request, 0)[3]
        if mapped == 0:
            break
        last = False
        for i in range(mapped):
            logical, _phys, length, _r1, _r2, flags, *_ = _EXTENT.unpack_from(
                request, _HEAD.size + i * _EXTENT.size)
            end = min(logical + length, size)
            if flags & FIEMAP_EXTENT_UNWRITTEN and end > logical:
                found.append((logical, end - logical))
            if logical + length <= start:  # no progress: never loop on a strange answer
                last = True
                break
            start = logical + length
            last = bool(flags & FIEMAP_EXTENT_LAST)
        if last:
            break
    return found


def write_out_unwritten(path: Path | str) -> int:
    """Rewrite every unwritten range of ``path`` with what it reads (zeros) and
    fdatasync: the bytes converted (0 if none, or no such file)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        ranges = unwritten_ranges(fd)
        for offset, length in ranges:
            done = 0
            while done < length:
                data = os.pread(fd, min(CHUNK, length - done), offset + done)
                if not data:
                    break  # the file shrank under us: nothing beyond its end to convert
                wrote = os.pwrite(fd, data, offset + done)
                done += wrote
        if ranges:
            os.fdatasync(fd)
        return sum(length for _, length in ranges)
    finally:
        os.close(fd)
