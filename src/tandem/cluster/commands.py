"""Running an external command with a hard deadline (fencing agents, notify hooks).

The agent's loop must never wait on a script or a BMC longer than configured:
the command gets its own session, and at the deadline its whole process group
is killed, children included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ran:
    """A finished (or killed) command: exit code (None: killed at the deadline) and output."""

    code: int | None
    out: str

    def tail(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1][:200] if lines else "no output"


async def run_bounded(argv: list[str], deadline: float, env: dict[str, str] | None = None) -> Ran:
    """Run `argv` until it exits or the monotonic `deadline`; then kill its process group."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
    except OSError as e:
        return Ran(127, f"{argv[0]}: cannot run ({e.strerror or e})")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), max(0.0, deadline - time.monotonic()))
        return Ran(proc.returncode, out.decode(errors="replace"))
    except TimeoutError:
        return Ran(None, "")
    finally:  # timed out or cancelled (agent stopping): nothing of it may outlive the call
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 2.0)
