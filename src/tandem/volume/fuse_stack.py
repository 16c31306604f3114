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


def set_write_through(device: str, through: bool = True) -> None:
    """Tell the block layer whether ``device`` has a volatile write cache.

    ``through`` only for a backend whose every completed write is already durable
    (a tandem volume with ``cache = "write-through"``): the kernel then drops the
    cache flushes and FUA bits ext4 would send, and ordering rests on completion,
    as on any write-through disk. On a write-back backend this would lose data,
    and the setting outlives ``losetup -d`` (the next file attached to the same
    loop device inherits it), so whoever sets it resets it before detaching and
    every attach states the mode it needs.
    """
    name = device.rsplit("/", 1)[-1]
    path = f"/sys/block/{name}/queue/write_cache"
    want = "write through" if through else "write back"
    with open(path, "w") as f:
        f.write(want)
    with open(path) as f:
        if f.read().strip() != want:
            raise RuntimeError(f"{path}: the kernel did not accept {want!r}")


@contextlib.contextmanager
def loop_device(path: str, *, direct_io: bool = True, write_through: bool = False) -> Iterator[str]:
    """Attach ``path`` to a free loop device; yield ``/dev/loopN``; detach it after.

    ``--direct-io=on`` makes loop submit O_DIRECT (async) I/O to the FUSE file:
    no second page cache under ext4's, and flushes reach the backend as FSYNC
    (unless ``write_through``: see :func:`set_write_through`).
    """
    args = ["losetup", "--find", "--show"]
    if direct_io:
        args.insert(1, "--direct-io=on")
    dev = _run(*args, path).strip()
    if not dev.startswith("/dev/loop"):
        raise RuntimeError(f"losetup returned {dev!r}")
    try:
        set_write_through(dev, write_through)
        yield dev
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            set_write_through(dev, False)
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
