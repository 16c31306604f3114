"""Put a block device and ext4 on top of the FUSE file: loop (direct I/O) + mount.

Why here: tests, the benchmark and later the filesystem resource all need the
same careful sequence, and all must clean up only what they created (the loop
device name we got back from ``losetup --find --show``, the mount we made),
also when something in the middle fails.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator


def _run(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip() or res.returncode}")
    return res.stdout


@contextlib.contextmanager
def loop_device(path: str, *, direct_io: bool = True) -> Iterator[str]:
    """Attach ``path`` to a free loop device; yield ``/dev/loopN``; detach it after.

    ``--direct-io=on`` makes loop submit O_DIRECT (async) I/O to the FUSE file:
    no second page cache under ext4's, and flushes reach the backend as FSYNC.
    """
    args = ["losetup", "--find", "--show"]
    if direct_io:
        args.insert(1, "--direct-io=on")
    dev = _run(*args, path).strip()
    if not dev.startswith("/dev/loop"):
        raise RuntimeError(f"losetup returned {dev!r}")
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)


def mkfs_ext4(device: str) -> None:
    """Quiet mkfs.ext4 without discard (the FUSE file refuses FALLOCATE anyway)."""
    _run("mkfs.ext4", "-q", "-F", "-E", "nodiscard", device)


@contextlib.contextmanager
def ext4_mount(device: str, mountpoint: str) -> Iterator[str]:
    """Mount ext4 from ``device`` at ``mountpoint``; unmount it on exit."""
    _run("mount", "-t", "ext4", device, mountpoint)
    try:
        yield mountpoint
    finally:
        res = subprocess.run(["umount", mountpoint], capture_output=True, timeout=60)
        if res.returncode != 0:  # still busy: do not leave it behind
            subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=60)
