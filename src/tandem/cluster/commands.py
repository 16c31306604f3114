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


OUTPUT_GRACE = 0.2
EXIT_POLL = 0.02
"""Seconds to read what an exited command wrote, if a child it left holds its output open."""


async def run_bounded(argv: list[str], deadline: float, env: dict[str, str] | None = None) -> Ran:
    """Run `argv` until it exits or the monotonic `deadline`; then kill its process group.

    The answer is its exit, not the end of its output: a script that leaves a child
    behind (`sleep 3 &`) keeps the pipe open, and waiting for EOF made a fence that
    had exited 0 look killed at the deadline, unconfirmed (review 35). Whatever is
    left of its process group is killed when it ends, that child too."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
    except OSError as e:
        return Ran(127, f"{argv[0]}: cannot run ({e.strerror or e})")
    chunks: list[bytes] = []

    async def read() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            chunks.append(chunk)

    reader = asyncio.ensure_future(read())
    try:
        # Polled: asyncio's Process.wait() (Python 3.11) also waits for the pipes to close.
        while proc.returncode is None:
            if time.monotonic() >= deadline:
                return Ran(None, b"".join(chunks).decode(errors="replace"))
            pause = min(EXIT_POLL, max(0.0, deadline - time.monotonic()))
            if reader.done():  # (its output closed, the command still running)
                await asyncio.sleep(pause)
            else:
                await asyncio.wait({reader}, timeout=pause)
        await asyncio.wait({reader}, timeout=OUTPUT_GRACE)  # (a cancel of ours goes through)
        return Ran(proc.returncode, b"".join(chunks).decode(errors="replace"))
    finally:  # exited, timed out or cancelled (agent stopping): nothing of it may outlive the call
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        reader.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 2.0)
        await asyncio.wait({reader}, timeout=1.0)  # (its own cancellation is not raised here)
