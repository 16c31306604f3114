"""The optional watchdog (``agent.watchdog = "/dev/watchdog"``): if the agent
hangs, the kernel resets the machine.

The volume's write lease already stops a hung primary from completing writes;
the watchdog is the second line (as in Patroni): it also ends a node whose
agent cannot even run. The agent pets it from the lease task, so the machine
resets when the lease task stalls for longer than the device timeout, which
is set to the lease TTL.

Never enable it on a shared machine or in a lab: every lab host shares the one
kernel, and the reset takes the whole machine down. When the device is not
there (no hardware watchdog, softdog not loaded: ``modprobe softdog``), the
agent refuses to start with one line saying so, rather than run unprotected
while the config says it is protected.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from pathlib import Path

from tandem.errors import TandemError

WDIOC_SETTIMEOUT = 0xC0045706  #: _IOWR('W', 6, int), linux/watchdog.h


def check_available(path: Path) -> None:
    """Raise a one-line error unless `path` is a watchdog character device we can open."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise TandemError(f"agent.watchdog: {path} does not exist on this machine (no hardware"
                          f" watchdog and softdog not loaded: `modprobe softdog`, or remove"
                          f" agent.watchdog)") from None
    if not stat.S_ISCHR(mode):
        raise TandemError(f"agent.watchdog: {path} is not a character device")


class Watchdog:
    def __init__(self, path: Path, timeout: int):
        check_available(path)
        self.path = path
        self.timeout = timeout
        self.fd: int | None = None

    def arm(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_WRONLY)
        except OSError as e:
            raise TandemError(f"agent.watchdog: cannot open {self.path}: {e.strerror}") from None
        fcntl.ioctl(self.fd, WDIOC_SETTIMEOUT, struct.pack("i", max(1, self.timeout)))

    def pet(self) -> None:
        if self.fd is not None:
            os.write(self.fd, b"\0")

    def disarm(self) -> None:
        """Orderly stop: the magic close 'V' tells the driver not to reset."""
        if self.fd is not None:
            os.write(self.fd, b"V")
            os.close(self.fd)
            self.fd = None
