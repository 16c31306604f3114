"""The slice of the FUSE kernel ABI (``linux/fuse.h``) that the raw server speaks.

Why a hand-written copy instead of libfuse: the hot path must cost a few tens of
microseconds per request, so the server parses headers itself with precompiled
``struct.Struct`` objects and never goes through a C library's callback layer.

All layouts are native little/native-endian, 64-bit aligned, as the kernel sends
them for protocol 7.9 and later. We negotiate at most ``OUR_MINOR`` (7.38, the
layout this file mirrors); a newer kernel (6.18 offers 7.44+) then speaks 7.38 to
us, which keeps every struct size below exact.
"""

from __future__ import annotations

import struct

KERNEL_MAJOR = 7
OUR_MINOR = 38
MIN_MINOR = 28  # FUSE_MAX_PAGES appeared in 7.28; older kernels are refused.

ROOT_ID = 1
FILE_ID = 2

# --- opcodes -------------------------------------------------------------------
LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
ACCESS = 34
CREATE = 35
INTERRUPT = 36
DESTROY = 38
BATCH_FORGET = 42
FALLOCATE = 43
MAX_OPCODE = 64

OPCODE_NAMES = {
    LOOKUP: "LOOKUP", FORGET: "FORGET", GETATTR: "GETATTR", SETATTR: "SETATTR",
    OPEN: "OPEN", READ: "READ", WRITE: "WRITE", STATFS: "STATFS", RELEASE: "RELEASE",
    FSYNC: "FSYNC", SETXATTR: "SETXATTR", GETXATTR: "GETXATTR", LISTXATTR: "LISTXATTR",
    REMOVEXATTR: "REMOVEXATTR", FLUSH: "FLUSH", INIT: "INIT", OPENDIR: "OPENDIR",
    READDIR: "READDIR", RELEASEDIR: "RELEASEDIR", FSYNCDIR: "FSYNCDIR", ACCESS: "ACCESS",
    CREATE: "CREATE", INTERRUPT: "INTERRUPT", DESTROY: "DESTROY",
    BATCH_FORGET: "BATCH_FORGET", FALLOCATE: "FALLOCATE",
}

# --- INIT flags (fuse_init_in.flags / fuse_init_out.flags) ------------------------
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16  # never requested: the page cache must stay out of the way
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22

# --- OPEN reply flags -------------------------------------------------------------
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NOFLUSH = 1 << 5
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6

# --- SETATTR valid bits ------------------------------------------------------------
FATTR_SIZE = 1 << 3

# --- struct layouts ----------------------------------------------------------------
# fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
IN_HEADER = struct.Struct("<IIQQIIIHH")
# fuse_out_header: len, error, unique
OUT_HEADER = struct.Struct("<IiQ")
# fuse_init_in (7.36+: flags2 and unused[11]; we only need the first four words)
INIT_IN = struct.Struct("<IIII")
# fuse_init_out: major, minor, max_readahead, flags, max_background,
# congestion_threshold, max_write, time_gran, max_pages, map_alignment, flags2, unused[7]
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
# fuse_attr: ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink
# uid gid rdev blksize flags
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
# fuse_attr_out: attr_valid, attr_valid_nsec, dummy, attr
ATTR_OUT_HEAD = struct.Struct("<QII")
# fuse_entry_out: nodeid, generation, entry_valid, attr_valid, entry_nsec, attr_nsec, attr
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")
# fuse_open_out: fh, open_flags, padding
OPEN_OUT = struct.Struct("<QII")
# fuse_read_in / fuse_write_in: fh, offset, size, flags, lock_owner, flags, padding
RW_IN = struct.Struct("<QQIIQII")
# fuse_write_out: size, padding
WRITE_OUT = struct.Struct("<II")
# fuse_setattr_in: valid, padding, fh, size, ...
SETATTR_IN_HEAD = struct.Struct("<IIQQ")
# fuse_kstatfs: blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
# fuse_dirent header: ino, off, namelen, type (name follows, padded to 8)
DIRENT_HEAD = struct.Struct("<QQII")

assert IN_HEADER.size == 40
assert OUT_HEADER.size == 16
assert INIT_OUT.size == 64
assert ATTR.size == 88
assert ATTR_OUT_HEAD.size + ATTR.size == 104
assert ENTRY_OUT_HEAD.size + ATTR.size == 128
assert RW_IN.size == 40
assert STATFS_OUT.size == 80

# Offset of the payload of a WRITE request: in_header + fuse_write_in.
WRITE_DATA_OFFSET = IN_HEADER.size + RW_IN.size

DT_DIR = 4
DT_REG = 8
