"""The campaign's nemesis: turns a planned fault (torture_plan.Fault) into the
lab's fault injection on a running stack, and heals it again.

Every fault and heal is recorded as a `nemesis` event (schedule, fault index,
kind, phase) next to the lab's own `fault`/`heal` events, so the checker and
the report attribute unavailability to the fault that caused it.

Faults whose target is gone (a pause of a process on a host crashed by an
overlapping fault) are recorded as skipped, not failed: combinations are drawn
blindly on purpose.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from tandem.errors import LabError, TandemError
from tandem.lab.stack import DATA_NODES, LabStack
from tandem.lab.supervisor import start_ticks, wait_stopped
from tandem.lab.topology import NETWORKS
from tandem.lab.torture_plan import Fault


class Nemesis:
    def __init__(self, stack: LabStack, on_restart=None, leader=None):
        self.stack = stack
        self.leader = leader or stack.leader  # callable: the node running the DB group now
        self.lab = stack.lab
        self.on_restart = on_restart  # callable(host): services beyond the stack's (the simulated host)
        #: (host, name) -> (pid, kernel start time) of the process we stopped
        self.paused: dict[tuple[str, str], tuple[int, int | None]] = {}

    # --- one fault ---------------------------------------------------------------------
    def apply(self, fault: Fault, tag: dict[str, Any]) -> bool:
        """Inject `fault`; False (and a `skipped` record) if its target is not there."""
        try:
            detail = getattr(self, f"_apply_{fault.kind}")(fault.params)
        except (LabError, TandemError, OSError) as e:
            self.lab.events.record("nemesis", **tag, phase="skipped", why=str(e)[:300])
            return False
        self.lab.events.record("nemesis", **tag, phase="start", detail=detail)
        return True

    def heal(self, fault: Fault, tag: dict[str, Any]) -> None:
        try:
            getattr(self, f"_heal_{fault.kind}")(fault.params)
        except (LabError, TandemError, OSError) as e:
            self.lab.events.record("nemesis", **tag, phase="heal_failed", why=str(e)[:300])
            return
        self.lab.events.record("nemesis", **tag, phase="end")

    # --- crash ---------------------------------------------------------------------------
    def _apply_crash(self, p: dict) -> str:
        self.lab.faults.crash(p["host"])
        return f"crashed {p['host']}"

    def _heal_crash(self, p: dict) -> None:
        self.restart(p["host"])

    def restart(self, host: str) -> None:
        if host not in self.lab.read_state()["down"]:
            return
        if host in DATA_NODES:
            self.stack.restart_host(host)
        else:
            self.lab.faults.restart(host)
            self.stack.etcd.start_member(host)
        if self.on_restart:
            self.on_restart(host)

    # --- disk errors ---------------------------------------------------------------------
    def _apply_eio(self, p: dict) -> str:
        """Every I/O of the node's backing store fails from now on: the disk goes
        Failed at its next read or write (a Secondary at the next replicated write)."""
        from tandem.volume import control
        sock = self.lab.host_dir(p["host"]) / "run" / "volume-db.sock"
        size = control.call(sock, "status", timeout=5)["size"]
        control.call(sock, "inject-eio", ranges=[[0, size]], timeout=5)
        return f"I/O errors on the whole backing store of {p['host']}"

    def peer_up_to_date(self, host: str) -> bool:
        """The peer's disk is UpToDate by its own account and by the DCS record. A
        fenced peer still calls its disk UpToDate (only the DCS says Outdated), and
        a disk filled from it was taken for current (torture 36:25: 828 writes lost)."""
        peer = next(h for h in DATA_NODES if h != host)
        try:
            recorded = self.stack.status()["volumes"][0]["disks"].get(peer)
            return recorded == "UpToDate" and self.stack.volume_status(peer)["disk"] == "UpToDate"
        except (LabError, KeyError, IndexError):
            return False

    def recover_failed_disk(self, host: str) -> str:
        """After a reboot, a Failed disk: `invalidate` (full sync from the peer) when the
        peer is UpToDate, else `attach` (this disk may hold the only newest copy)."""
        cmd = "invalidate" if self.peer_up_to_date(host) else "attach"
        self.stack.tandem(host, "volume", cmd, "db", timeout=120)
        return cmd

    def _heal_eio(self, p: dict) -> None:
        """What an operator does with a failed disk. If the peer's disk is UpToDate,
        replace it: power the node off, put in a new disk (fresh backing file and
        metadata: `volume create`), power on; a full sync from the peer fills it. If
        not (the peer was fenced: Outdated), the failed disk holds the only copy of
        the newest acknowledged writes, and throwing it away loses them (torture
        25:15): treat the error as transient instead, reboot with the same disk and
        `volume attach` it."""
        host = p["host"]
        peer_ok = self.peer_up_to_date(host)
        if host not in self.lab.read_state()["down"]:
            self.lab.faults.crash(host)
        if peer_ok:
            for name in ("db.img", "db.meta"):
                (self.lab.host_dir(host) / "data" / name).unlink(missing_ok=True)
            self.stack.tandem(host, "volume", "create", "db", timeout=60)
        self.restart(host)
        if not peer_ok and self.stack.volume_status(host)["disk"] == "Failed":
            self.stack.tandem(host, "volume", "attach", "db", timeout=120)
        self.lab.events.record("disk_heal", host=host, action="replaced" if peer_ok else "attached")

    # --- partitions ------------------------------------------------------------------------
    def _blocks(self, p: dict) -> list[list[str]]:
        nets = NETWORKS if p["net"] == "both" else (p["net"],)
        out = []
        for n in nets:
            for x in p["a"]:
                for y in p["b"]:
                    if n in self.lab.spec.host(x).networks and n in self.lab.spec.host(y).networks:
                        out.append([x, y, n])
                        if not p["one_way"]:
                            out.append([y, x, n])
        return out

    def _apply_partition(self, p: dict) -> str:
        self.lab.faults.partition(p["a"], p["b"], net=p["net"], one_way=p["one_way"])
        return f"{','.join(p['a'])} {'->' if p['one_way'] else '<->'} {','.join(p['b'])} on {p['net']}"

    def _heal_partition(self, p: dict) -> None:
        """Remove this partition's rules only: an overlapping one stays."""
        mine = self._blocks(p)
        with self.lab.state() as st:
            st["blocks"] = [b for b in st["blocks"] if b not in mine]
            blocks = st["blocks"]
        self.lab.faults.apply_partitions(blocks)
        self.lab.events.record("heal", fault="partition", a=p["a"], b=p["b"], net=p["net"])

    # --- paused processes ------------------------------------------------------------------
    def _target(self, p: dict) -> tuple[str, int]:
        host, name = p["host"], p["name"]
        if host == "leader":
            host = self.leader() or "node1"
        if name == "mariadb":  # started by the agent, not by the lab: its pid file
            pidfile = self.lab.host_dir(host) / "run" / "mariadb" / "mariadb" / "server" / "mariadbd.pid"
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                raise LabError(f"no MariaDB running on {host}") from None
            if not self.lab.supervisor(host).owns(pid):  # a stale pid file: the pid may be anyone's now
                raise LabError(f"no MariaDB running on {host} (pid {pid} of its pid file is not there)")
            try:  # the pid file is the server user's to write: pause only a mariadbd
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                comm = ""
            if comm != "mariadbd":
                raise LabError(f"no MariaDB running on {host} (pid {pid} of its pid file is"
                               f" {comm or 'gone'})")
            return host, pid
        sup = self.lab.supervisor(host)
        rec = sup.get(name)
        if rec is None or host in self.lab.read_state()["down"] or not sup.alive(rec):
            raise LabError(f"no {name} running on {host}")
        return host, rec.pid

    def _apply_pause(self, p: dict) -> str:
        host, pid = self._target(p)
        started = start_ticks(pid)
        os.kill(pid, signal.SIGSTOP)
        self.paused[(host, p["name"])] = (pid, started)
        # Recorded once every thread is stopped, not when the signal was sent: the
        # checker ends a paused volume daemon's writable interval here (wait_stopped).
        stopped = wait_stopped(pid)
        self.lab.events.record("fault", fault="pause", host=host, name=p["name"], pid=pid,
                               stopped=stopped)
        return f"SIGSTOP {p['name']} pid {pid} on {host}" + ("" if stopped else " (not yet stopped)")

    def _heal_pause(self, p: dict) -> None:
        key = next((k for k in self.paused if k[1] == p["name"] and p["host"] in (k[0], "leader")), None)
        entry = self.paused.pop(key, None) if key else None
        pid, started = entry if entry else (None, None)
        # The very process we stopped (not a recycled pid): same kernel start time. Not
        # "is it in the host's namespace": a process stopped just after its start may
        # still be nsenter in the root namespace, and it was never resumed (torture 66:3:
        # an agent paused at birth stayed stopped, its node Offline for good).
        if pid is not None and started is not None and start_ticks(pid) == started:
            # Recorded before the process can run again: the checker opens a resumed
            # volume daemon's writable interval at this event, so recorded after
            # SIGCONT it left the daemon's first moments running out of every interval.
            host = key[0]
            self.lab.events.record("heal", fault="pause", host=host, name=p["name"], pid=pid)
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError as e:
                # Not resumed after all: to the checker, paused again (its interval ends
                # here), with why. A process that is gone stays gone (the census finds
                # it); one still there stays ours to resume.
                self.lab.events.record("fault", fault="pause", host=host, name=p["name"], pid=pid,
                                       resume_failed=str(e)[:300])
                if not isinstance(e, ProcessLookupError):
                    self.paused[key] = (pid, started)
                    raise LabError(f"could not resume {p['name']} pid {pid} on {host}: {e}") from None

    # --- slow links ------------------------------------------------------------------------
    def _apply_slow(self, p: dict) -> str:
        if p["host"] in self.lab.read_state()["down"]:
            raise LabError(f"{p['host']} is down")
        self.lab.faults.slow(p["host"], p["rate"], p["net"])
        return f"{p['host']} {p['net']} limited to {p['rate']}"

    def _heal_slow(self, p: dict) -> None:
        self.lab.faults.unslow(p["host"])

    # --- processes that died on their own ---------------------------------------------------
    EXPECTED = {"node1": ("etcd", "volume-db", "agent"), "node2": ("etcd", "volume-db", "agent"),
                "witness": ("etcd", "simhost")}

    def census(self) -> list[dict[str, Any]]:
        """The lab's own daemons that are gone although their host is up (no fault of
        ours killed them): recorded as `proc_died` with how they ended, and started
        again so the campaign goes on. A finding for the report, not hidden."""
        down = set(self.lab.read_state()["down"])
        dead = []
        for host, names in self.EXPECTED.items():
            if host in down:
                continue
            for name in names:
                sup = self.lab.supervisor(host)
                rec = sup.get(name)
                if rec is None or sup.alive(rec):
                    continue
                how = "unknown (not our child)"
                with contextlib.suppress(ChildProcessError):
                    pid, status = os.waitpid(rec.pid, os.WNOHANG)
                    if pid:
                        how = (f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
                               if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}")
                entry = {"host": host, "name": name, "pid": rec.pid, "how": how}
                self.lab.events.record("proc_died", **entry)
                dead.append(entry)
                self._start(host, name)
        return dead

    def _start(self, host: str, name: str) -> None:
        if name == "etcd":
            self.stack.etcd.start_member(host)
        elif name == "volume-db":
            self.stack.start_volume(host)
        elif name == "agent":
            self.stack.start_agent(host)
        elif self.on_restart:
            self.on_restart(host)

    # --- everything ----------------------------------------------------------------------
    def heal_all(self) -> None:
        """Whatever a schedule left behind: resume, unslow, reconnect, power on."""
        for host, name in list(self.paused):
            self._heal_pause({"host": host, "name": name})
        st = self.lab.read_state()
        if st["blocks"]:
            self.lab.faults.heal()
        for key in list(st["slow"]):
            self.lab.faults.unslow(key.split("/")[0])
        for host in st["down"]:
            self.restart(host)
        self.census()
