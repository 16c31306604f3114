"""Long-running children (mariadbd, haproxy) by pid, safely, and who holds a path.

Why not asyncio subprocesses for daemons: an asyncio subprocess transport kills
its child when it is closed or garbage-collected, and the agent (or the
one-shot runner) must be able to exit, restart and find the daemon again. So
daemons are started with ``subprocess.Popen`` in their own session and
remembered as a :class:`ProcRef`: the pid plus the process's start time from
``/proc/<pid>/stat``. Every later signal checks both, so a recycled pid is
never signalled — we only ever kill what we started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our child (no zombie left)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True, slots=True)
class ProcRef:
    """A process we started: pid and kernel start time (clock ticks since boot)."""

    pid: int
    start_ticks: int

    @classmethod
    def of(cls, pid: int) -> ProcRef | None:
        fields = _stat_fields(pid)
        return cls(pid, int(fields[19])) if fields else None

    def alive(self) -> bool:
        """True while this very process exists and is not a zombie."""
        _reap(self.pid)
        fields = _stat_fields(self.pid)
        return bool(fields) and int(fields[19]) == self.start_ticks and fields[0] not in ("Z", "X")

    def signal(self, sig: int) -> bool:
        """Send `sig` if the process is still the one we started; False if gone."""
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
            return True
        return False

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_ticks": self.start_ticks}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcRef:
        return cls(int(data["pid"]), int(data["start_ticks"]))


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> ProcRef:
    """Start a daemon in its own session with output appended to `log`."""
    with open(log, "ab") as out:
        child = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=dict(env) if env else None,
                                 cwd=str(cwd) if cwd else None, start_new_session=True)
    ref = ProcRef.of(child.pid)
    if ref is None:  # it died before we could read its start time
        child.wait()
        raise OSError(f"{argv[0]} exited at once with {child.returncode} (see {log})")
    return ref


async def wait_gone(ref: ProcRef, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while ref.alive():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def terminate(ref: ProcRef, grace: float, sig: int = signal.SIGTERM) -> str:
    """`sig`, wait up to `grace` seconds, then SIGKILL. Returns how it ended."""
    if not ref.signal(sig):
        return "was not running"
    if await wait_gone(ref, grace):
        return f"exited after {signal.Signals(sig).name}"
    ref.signal(signal.SIGKILL)
    if await wait_gone(ref, 5):
        return f"did not exit within {grace:g} s of {signal.Signals(sig).name}: killed"
    return "survived SIGKILL (stuck in the kernel?)"


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(ln.strip() for ln in text[-lines:])


# --- who holds a path ---------------------------------------------------------------------
def _under(link: str, root: str) -> bool:
    return link == root or link.startswith(root + "/")


def holders(path: str | Path) -> list[tuple[int, str]]:
    """Processes with a cwd, root, open file or mapping under `path` (like
    ``fuser -m``): ``[(pid, command name)]``. Scanning /proc needs no extra
    package and sees every process of the machine (mounts are shared across
    the lab's hosts)."""
    root = os.path.realpath(path)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid():
            continue
        if _pid_uses(pid, root):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                comm = "?"
            found.append((pid, comm))
    return sorted(found)


def _pid_uses(pid: int, root: str) -> bool:
    base = f"/proc/{pid}"
    for name in ("cwd", "root", "exe"):
        with contextlib.suppress(OSError):
            if _under(os.readlink(f"{base}/{name}"), root):
                return True
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"{base}/fd"):
            with contextlib.suppress(OSError):
                if _under(os.readlink(f"{base}/fd/{fd}"), root):
                    return True
    with contextlib.suppress(OSError), open(f"{base}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and _under(parts[5].strip(), root):
                return True
    return False
