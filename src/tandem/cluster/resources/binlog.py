"""The one repair MariaDB cannot make on its own after a crash at shutdown.

MariaDB commits in two phases when the binary log is on: InnoDB prepares, the
binlog records the transaction (fsynced), then InnoDB commits without an fsync
of its own, since after a crash the binlog decides. The binlog's first event
carries an "in use" flag; a clean close clears it, and only a binlog still
marked in use makes the next start run crash recovery (commit the prepared
transactions the binlog holds, roll back the others).

A node that dies during a graceful shutdown, after the binlog was closed but
before InnoDB wrote its last commit records (lab campaign, schedule 107:77),
leaves prepared transactions and a clean binlog. mariadbd then refuses to start
("Found N prepared transactions! ... --tc-heuristic-recover") on every node the
disk moves to, for ever. Both heuristic choices are wrong for us: ROLLBACK
drops transactions that are in the binlog and may have been acknowledged,
COMMIT keeps ones that never reached it. Marking the last binlog in use again
lets MariaDB make the exact decision itself, from the binlog.

Binlog layout (MariaDB's binlog-event docs): a 4-byte magic, then the
Format_description event, whose common header holds the event type at offset
4 + 4 and the 2-byte little-endian flags at offset 4 + 17. The event's CRC is
computed with the in-use flag cleared, so setting it needs no new checksum.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAGIC = b"\xfebin"
TYPE_OFFSET = 4 + 4
FLAGS_OFFSET = 4 + 17
FORMAT_DESCRIPTION_EVENT = 15
IN_USE = 0x1

PREPARED_AT_START = "prepared transactions! It means that server was not shut down properly"


class BinlogError(Exception):
    """The binlog is not what we expect; we change nothing."""


def _open_regular(path: Path, flags: int) -> int:
    """Open a file the database server's user controls, as root: never through a
    symlink, never blocking on a FIFO, and only a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise BinlogError(f"{path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BinlogError(f"{path} is not a regular file: not touched")
    return fd


def last_binlog(datadir: Path, index: str = "mariadb-bin.index") -> Path:
    """The binlog MariaDB will look at first: the last line of its index (one in the
    datadir: the index is the server's to write, and we open what it names as root)."""
    fd = _open_regular(datadir / index, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        text = f.read(1 << 20).decode(errors="replace")
    names = [n.strip() for n in text.splitlines() if n.strip()]
    if not names:
        raise BinlogError(f"{datadir / index} lists no binlog")
    path = Path(names[-1])
    path = path if path.is_absolute() else datadir / path
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(datadir):
        raise BinlogError(f"{datadir / index} names {names[-1]!r}, outside the datadir: not touched")
    return path


def mark_in_use(path: Path) -> bool:
    """Set the in-use flag of binlog `path` durably. False if it was set already."""
    fd = _open_regular(path, os.O_RDWR)
    try:
        head = os.pread(fd, FLAGS_OFFSET + 2, 0)
        if len(head) < FLAGS_OFFSET + 2 or head[:4] != MAGIC or head[TYPE_OFFSET] != FORMAT_DESCRIPTION_EVENT:
            raise BinlogError(f"{path} does not start with a binlog header: not touched")
        flags = int.from_bytes(head[FLAGS_OFFSET:FLAGS_OFFSET + 2], "little")
        if flags & IN_USE:
            return False
        os.pwrite(fd, (flags | IN_USE).to_bytes(2, "little"), FLAGS_OFFSET)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)
