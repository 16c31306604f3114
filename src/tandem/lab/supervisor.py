"""Start processes inside a lab host and stop exactly those processes.

Each process gets its own session (so its whole group can be signalled), its
output in the host's log directory, and a record file `run/procs/<name>.json`
with its pid. Stopping and crashing go by those recorded pids and by the pids
that live in the host's network namespace, which only the lab created: never
by matching process names.

A record outlives its process when the process dies by itself, and this
machine recycles pids quickly (pid_max 32768, thousands of processes per
campaign): a recorded process is signalled only while its pid still names the
process that was started, known by its kernel start time (and a bare pid, such
as MariaDB's pid file, only while it lives in the host's network namespace:
:func:`in_netns`). Without that check a stale record could stop or kill a
process of another lab, of CI, or of the machine itself. (Not the namespace for
records: a process just started is still in the root namespace until nsenter
has entered the host's, and a campaign's census took such an agent for dead.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tandem.errors import LabError
from tandem.lab.shell import ns_prefix, run


@dataclass(frozen=True)
class ProcRecord:
    host: str
    name: str
    pid: int
    cmd: list[str]
    log: str
    started: float
    start_ticks: int | None = None  #: kernel start time (clock ticks since boot): the identity


def start_ticks(pid: int) -> int | None:
    """The kernel start time of a live (not zombie) `pid`, None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def wait_stopped(pid: int, timeout: float = 2.0) -> bool:
    """Whether every thread of `pid` is stopped (state T) within `timeout` seconds.

    kill(SIGSTOP) returns before the process stops: the kernel wakes one thread to
    begin the group stop, and until that thread runs (on a loaded machine, some
    milliseconds) the others go on. Torture 205:31: a volume daemon completed a
    commit 7 ms after its pause was recorded, and the checker, which ends a paused
    daemon's writable interval at that event, called the write one of two writers."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with (contextlib.suppress(FileNotFoundError, ProcessLookupError),
                      open(f"/proc/{pid}/task/{tid}/stat") as f):
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError):
            return False
        if states and all(s in ("T", "t") for s in states):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    return start_ticks(pid) is not None


def in_netns(pid: int, netns: str) -> bool:
    """Is `pid` a live process inside the lab network namespace `netns`?"""
    try:
        return (os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
                and pid_alive(pid))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def pids_in_netns(netns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


class Supervisor:
    """The processes of one host."""

    def __init__(self, host: str, netns: str, host_dir: Path):
        self.host = host
        self.netns = netns
        self.host_dir = host_dir
        self.proc_dir = host_dir / "run" / "procs"
        self.log_dir = host_dir / "log"
        self._children: dict[int, subprocess.Popen] = {}

    def _record_path(self, name: str) -> Path:
        return self.proc_dir / f"{name}.json"

    def start(self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> ProcRecord:
        existing = self.get(name)
        if existing and self.alive(existing):
            raise LabError(f"{self.host}: process {name!r} already running (pid {existing.pid})")
        self.proc_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        full_env = {**os.environ, "TANDEM_LAB_HOST": self.host, **(env or {})}
        with open(log, "ab") as out:
            child = subprocess.Popen(
                [*ns_prefix(self.netns), *cmd], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=full_env, cwd=str(cwd or self.host_dir),
                start_new_session=True)
        self._children[child.pid] = child
        rec = ProcRecord(self.host, name, child.pid, list(cmd), str(log), time.time(),
                         start_ticks(child.pid))
        self._record_path(name).write_text(json.dumps(rec.__dict__))
        return rec

    def get(self, name: str) -> ProcRecord | None:
        try:
            return ProcRecord(**json.loads(self._record_path(name).read_text()))
        except FileNotFoundError:
            return None

    def records(self) -> list[ProcRecord]:
        if not self.proc_dir.exists():
            return []
        return [ProcRecord(**json.loads(p.read_text())) for p in sorted(self.proc_dir.glob("*.json"))]

    def owns(self, pid: int) -> bool:
        """Is the bare `pid` (no record) a process of this host, not a recycled pid?"""
        return in_netns(pid, self.netns)

    def alive(self, rec: ProcRecord) -> bool:
        """Is the recorded process still running (its pid not handed to another)?"""
        if rec.start_ticks is None:  # a record from before start times were kept
            return self.owns(rec.pid)
        return start_ticks(rec.pid) == rec.start_ticks

    def running(self, name: str) -> bool:
        """Is the process recorded as `name` still running?"""
        rec = self.get(name)
        return rec is not None and self.alive(rec)

    def require(self, name: str) -> ProcRecord:
        rec = self.get(name)
        if rec is None:
            raise LabError(f"{self.host}: no process named {name!r} was started")
        return rec

    def signal(self, name: str, sig: int) -> None:
        rec = self.require(name)
        if not self.alive(rec):
            raise LabError(f"{self.host}: process {name!r} (pid {rec.pid}) is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rec.pid, sig)

    def stop(self, name: str, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL after `timeout`; return the exit code
        when it was our child."""
        rec = self.get(name)
        if rec is None:
            return None
        if self.alive(rec):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rec.pid, signal.SIGCONT)
                os.killpg(rec.pid, signal.SIGTERM)
            if not self._wait(rec.pid, timeout) and self.alive(rec):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(rec.pid, signal.SIGKILL)
                self._wait(rec.pid, 5)
        code = self._reap(rec.pid)
        self._record_path(name).unlink(missing_ok=True)
        return code

    def kill_all(self) -> list[int]:
        """SIGKILL every recorded process group and everything else in the host's
        namespace; return the pids that were killed."""
        killed = []
        for rec in self.records():
            if self.alive(rec):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(rec.pid, signal.SIGKILL)
                    killed.append(rec.pid)
        for pid in pids_in_netns(self.netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        deadline = time.monotonic() + 5
        swept = False
        while time.monotonic() < deadline:
            for pid in killed:
                self._reap(pid)
            if not any(pid_alive(p) for p in killed):
                # Once more for anything that appeared meanwhile (a child forked as the
                # kill came), then done: an observer restarted in the namespace at once
                # (the lab's VIP watcher) kept this loop waiting its whole 5 s each time.
                late = [p for p in pids_in_netns(self.netns) if p not in killed]
                if swept or not late:
                    break
                for pid in late:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                swept = True
            time.sleep(0.02)
        for rec in self.records():
            self._record_path(rec.name).unlink(missing_ok=True)
        return sorted(set(killed))

    def _reap(self, pid: int) -> int | None:
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is not None:
                del self._children[pid]
            return code
        return None

    def _wait(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap(pid)
            if not pid_alive(pid):
                return True
            time.sleep(0.02)
        return False
