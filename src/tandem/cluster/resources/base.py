"""What every resource is: start/stop/monitor, each bounded in time, each
answering with one sentence (Pacemaker's resource agent contract, in-process).

Why this shape:

- The agent's HA loop must never stall on a hung ``umount`` or a MariaDB that
  does not answer: every operation runs under ``asyncio.wait_for`` with the
  resource's configured timeout, and every external command runs as an
  asyncio subprocess that is killed (its whole process group) when the
  operation is cancelled. Nothing here blocks the event loop for long; file
  probes that may hang on a suspended volume run in a worker thread.
- Operations never raise for expected failures: ``start``/``stop`` return an
  :class:`OpResult`, ``monitor`` a :class:`Health`, each with a short sentence
  that the agent puts in its status and history as is. Subclasses raise
  :class:`ResourceError` with that sentence; the base class turns it (and
  timeouts) into results.
- ``monitor`` distinguishes STOPPED (cleanly not running: nothing to undo)
  from FAILED (should run, or is in a state that needs recovery). The group
  decides whether STOPPED is a failure (it is, for a started group).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from tandem.errors import TandemError


class ResourceError(TandemError):
    """An operation failed; the message is the sentence shown to the operator."""


class HealthState(StrEnum):
    OK = "ok"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Health:
    """The outcome of a monitor: a state and why."""

    state: HealthState
    reason: str
    #: healthy, but the operator should act before it is not (a nearly full disk)
    warning: str = ""

    @classmethod
    def ok(cls, reason: str, warning: str = "") -> Health:
        return cls(HealthState.OK, reason, warning)

    @classmethod
    def failed(cls, reason: str) -> Health:
        return cls(HealthState.FAILED, reason)

    @classmethod
    def stopped(cls, reason: str) -> Health:
        return cls(HealthState.STOPPED, reason)

    @property
    def is_ok(self) -> bool:
        return self.state is HealthState.OK

    def __str__(self) -> str:
        return f"{self.state}: {self.reason}"


@dataclass(frozen=True, slots=True)
class OpResult:
    """The outcome of one start or stop (or monitor, in the history)."""

    resource: str
    op: str
    ok: bool
    sentence: str
    seconds: float

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return f"{self.resource} {self.op} {verdict} in {self.seconds:.2f} s: {self.sentence}"

    def to_json(self) -> dict[str, Any]:
        return {"resource": self.resource, "op": self.op, "ok": self.ok,
                "message": self.sentence, "seconds": round(self.seconds, 4)}


class Resource(ABC):
    """One managed thing. Subclasses implement ``_start``, ``_stop`` and
    ``_monitor`` (each returning its sentence or :class:`Health`) and may
    raise :class:`ResourceError`; callers use ``start``, ``stop``, ``monitor``.

    `config` is the kind's pydantic model (see ``config.py``): it carries the
    name, the per-operation timeouts and the restart threshold."""

    kind: ClassVar[str]

    def __init__(self, config: Any):
        self.config = config
        self.name: str = config.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # --- the contract ----------------------------------------------------------------
    async def start(self) -> OpResult:
        return await self._op("start", self._start, self.config.start_timeout)

    async def stop(self) -> OpResult:
        return await self._op("stop", self._stop, self.config.stop_timeout)

    async def monitor(self) -> Health:
        timeout = self.config.monitor_timeout
        try:
            return await asyncio.wait_for(self._monitor(), timeout)
        except TimeoutError:
            return Health.failed(f"monitor timed out after {timeout:g} s")  # or a step of it did
        except (ResourceError, OSError) as e:
            return Health.failed(_one_line(e))
        except Exception as e:  # a bug must not take the HA loop down: report it as a failure
            return Health.failed(f"internal error: {type(e).__name__}: {_one_line(e)}")

    async def _op(self, op: str, fn, timeout: float) -> OpResult:
        t0 = time.monotonic()
        try:
            sentence, ok = await asyncio.wait_for(fn(), timeout), True
        except TimeoutError:  # ours, or one inside that nobody turned into a ResourceError
            late = time.monotonic() - t0 >= timeout * 0.99
            sentence, ok = f"{op} timed out after {timeout:g} s" if late else f"{op}: a step timed out", False
        except (ResourceError, OSError) as e:
            sentence, ok = _one_line(e), False
        except Exception as e:  # a bug must not take the HA loop down: report it as a failure
            sentence, ok = f"{op}: internal error: {type(e).__name__}: {_one_line(e)}", False
        return OpResult(self.name, op, ok, sentence, time.monotonic() - t0)

    @abstractmethod
    async def _start(self) -> str: ...

    @abstractmethod
    async def _stop(self) -> str: ...

    @abstractmethod
    async def _monitor(self) -> Health: ...

    # --- helpers for subclasses --------------------------------------------------------
    @property
    def private_dir(self) -> Path:
        """``<run_dir>/<name>``: state, sockets and logs of this resource on the
        node's own disk (never the replicated one), so a restarted agent finds
        what it started, and the peer never sees it."""
        d = Path(self.config.run_dir) / self.name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _state_path(self) -> Path:
        return self.private_dir / "state.json"

    def load_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_path().read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            raise ResourceError(f"{self._state_path()}: unreadable state file (remove it after"
                                " checking by hand what this resource left running)") from None

    def save_state(self, state: Mapping[str, Any]) -> None:
        """Write the state file atomically and durably: it is what lets a
        restarted agent undo exactly what it did (the loop device, the pid)."""
        path = self._state_path()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def clear_state(self) -> None:
        self._state_path().unlink(missing_ok=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


# --- running commands ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CmdResult:
    argv: list[str]
    returncode: int
    output: str  #: stdout and stderr interleaved, at most the last 4 KiB

    @property
    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.output.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit {self.returncode}"


async def run_cmd(argv: Sequence[str], *, timeout: float, input: bytes | None = None,
                  env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                  check: bool = True) -> CmdResult:
    """Run a command to completion without blocking the event loop.

    Output goes to a temporary file, not a pipe, so a command that leaves a
    daemon behind (``haproxy -D``, an OCF agent) does not keep us waiting for
    EOF. The command gets its own process group; on timeout or cancellation
    the whole group is SIGKILLed and reaped before we return."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as out:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=out, stderr=out, env=dict(env) if env is not None else None,
                cwd=str(cwd) if cwd else None, start_new_session=True)
        except FileNotFoundError:
            raise ResourceError(f"{argv[0]}: command not found") from None
        try:
            if input is not None:
                assert proc.stdin is not None
                proc.stdin.write(input)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await proc.stdin.drain()
                proc.stdin.close()
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            raise ResourceError(f"{argv[0]} timed out after {timeout:g} s") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.shield(asyncio.wait_for(proc.wait(), 5))
        out.seek(0, os.SEEK_END)
        out.seek(max(0, out.tell() - 16384))  # room for the errors before a page of advice
        text = out.read().decode(errors="replace")
    res = CmdResult(argv, proc.returncode or 0, text)
    if check and res.returncode != 0:
        raise ResourceError(f"{' '.join(argv[:3])}: {res.last_line}")
    return res
