"""Secret files: read only when nobody but their owner can read them.

A key or password in a file that every local user can read is a secret in name
only; refusing it at start, in one line that says how to fix it, costs the
operator a chmod and keeps the mistake from lasting."""

from __future__ import annotations

import os
from pathlib import Path

from tandem.errors import TandemError


def read_private(path: Path, what: str) -> bytes:
    """The stripped content of `path`, or TandemError("WHAT PATH: problem (fix)")."""
    try:
        mode = os.stat(path).st_mode
        data = Path(path).read_bytes().strip()
    except OSError as e:
        raise TandemError(f"{what} {path}: {e.strerror}") from None
    if mode & 0o077:
        raise TandemError(f"{what} {path} is readable by others (chmod 600 it)")
    return data


def write_private(path: Path, data: bytes) -> None:
    """Created 0600 (never readable by others, not even between a write and a chmod),
    and in place at once (a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a stale tmp file from a crash keeps its old mode through O_CREAT
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
