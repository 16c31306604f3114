"""`tandem lab torture`: a Jepsen-style fault campaign against one real lab cluster.

One cluster (etcd, agents, volumes, MariaDB, management servers, haproxy, the
simulated host) is brought up once; then N schedules drawn from a seeded RNG
(torture_plan) are run against it under a mixed workload: the DB writer through
the DB VIP (unique acknowledged ids) and API clients deploying/stopping/starting
VMs through the API VIP. After each schedule everything is healed and the cluster
must converge within a bound (one leader with its resources running, both disks
UpToDate and Connected, each VIP on exactly one host); then online verify must
find both disks identical. At the end the checker reads the whole history:
no acknowledged write lost, never two writable nodes, never two holders of a
VIP, every accepted job applied exactly once; and measures write unavailability
per fault kind.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tandem.errors import LabError
from tandem.lab import ackcheck, checker, evidence
from tandem.lab.events import lost_lab_events, monotonic
from tandem.lab.lab import Lab
from tandem.lab.mgmtstack import API_PORT, MgmtStack, client_session
from tandem.lab.stack import DATA_NODES
from tandem.lab.timelimit import Overran, time_limit
from tandem.lab.torture_load import ApiClient, ApiLoad
from tandem.lab.torture_nemesis import Nemesis
from tandem.lab.torture_plan import Schedule, draw_schedule
from tandem.lab.vipwatch import VipWatch
from tandem.lab.writer import read_log

VERIFY_TIMEOUT = 300.0  # s: one online verify of the whole DB volume
STEP_SLACK = 300.0  # s: beyond its own bounds, what a step may take before the campaign gives up
VIP_TOLERANCE = 0.05  # s: two `ip monitor` processes stamp the two hosts' reports


@dataclass
class Options:
    schedules: int = 10
    seed: int = 1
    duration: float = 20.0
    only: int | None = None  # replay one schedule of the seed
    converge_bound: float = 120.0  # s from "all healed" to full redundancy
    api_workers: int = 2
    volume_size: str = "512MiB"  # the DB volume: the writer's table grows by ~40 MB an hour
    progress: Any = None  # callable(str) for a line per schedule
    stop_file: Path | None = None  # if it appears: no further schedule, straight to the checks
    evidence_dir: Path | None = None  # the logs of each failed schedule go there (see evidence)


@dataclass
class ScheduleResult:
    schedule: Schedule
    t_start: float
    t_faults_end: float = 0.0
    t_healed: float = 0.0
    t_converged: float | None = None
    verify: dict[str, Any] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)  # applied: kind, describe, start, end
    violations: list[str] = field(default_factory=list)
    t_end: float = 0.0

    @property
    def converge_seconds(self) -> float | None:
        return None if self.t_converged is None else self.t_converged - self.t_healed


class Campaign:
    def __init__(self, lab: Lab, opts: Options):
        self.lab = lab
        self.opts = opts
        self.stack = MgmtStack(lab, volume_size=opts.volume_size, op_seconds=0.5, dead_after=2.0)
        self.nemesis = Nemesis(self.stack, on_restart=self._restarted, leader=self._db_vip_holder)
        self.watch: VipWatch | None = None
        self.load: ApiLoad | None = None
        self.writer_log: Path | None = None
        self.results: list[ScheduleResult] = []
        self.aborted: str | None = None
        self.history: dict[str, Any] = {}
        self._history_reported: set[tuple[str, str]] = set()
        self._acks: ackcheck.AckedWritesCheck | None = None
        #: acknowledged writes a lookup after a schedule did not find (see history_violations)
        self.missing_at_lookup: list[dict] = []
        self._missing_seen = 0
        self._http = client_session()  # what the checks read besides the logs, for a re-check

    def say(self, line: str) -> None:
        if self.opts.progress:
            self.opts.progress(line)

    def _db_vip_holder(self) -> str | None:
        """Where the DB group runs, from the VIP watcher (instant; `tandem status` is a
        process start and a DCS read, seconds on a loaded machine)."""
        if self.watch is not None:
            held = [h for (h, a), on in list(self.watch.held.items()) if a == self.stack.vip and on]
            if len(held) == 1:
                return held[0]
        return self.stack.leader()

    def _restarted(self, host: str) -> None:
        if host == "witness":
            self.stack.start_simhost()

    # --- the run ---------------------------------------------------------------------------
    def setup(self) -> None:
        t0 = time.monotonic()
        self.stack.start()
        self.watch = VipWatch(self.lab, [self.stack.vip, self.stack.api_vip])
        self.watch.start()
        self.writer_log = self.stack.start_writer("writer", duration=10 ** 6)
        self._acks = ackcheck.AckedWritesCheck(self.writer_log, self.stack.query)
        admin = self.stack.admin
        self.load = ApiLoad(ApiClient(self.stack.endpoint, admin["apikey"], admin["secretkey"]),
                            workers=self.opts.api_workers, seed=self.opts.seed,
                            on_death=lambda w, why: self.lab.events.record("workload_died", worker=w,
                                                                          why=why))
        self.load.start()
        self.say(f"cluster up in {time.monotonic() - t0:.1f} s; writer and {self.opts.api_workers} API"
                 " clients running")

    def run(self) -> None:
        indexes = [self.opts.only] if self.opts.only is not None else range(self.opts.schedules)
        bound = self.opts.converge_bound
        for i in indexes:
            if self.opts.stop_file is not None and self.opts.stop_file.exists():
                self.say(f"{self.opts.stop_file} exists: no more schedules, checking the history")
                break
            sched = draw_schedule(self.opts.seed, i, self.opts.duration)
            try:  # faults, healing, convergence and verify (up to three runs, with a convergence
                # before each retry) all have their own bounds: this one is spare
                with time_limit(sched.duration + 4 * bound + 3 * VERIFY_TIMEOUT + STEP_SLACK,
                                f"schedule {sched.name}"):
                    res = self.run_schedule(sched)
            except Overran as e:
                self._abort(sched.name, str(e))
                break
            except Exception as e:  # a bug of the harness: the history is still checked
                self.say("".join(traceback.format_exception(e))[-4000:])
                self._abort(sched.name, f"the harness failed: {type(e).__name__}: {e}")
                break
            self.results.append(res)
            conv = res.converge_seconds
            self.say(f"schedule {sched.name}: {'; '.join(f['describe'] for f in res.faults) or 'no fault'}"
                     f" -> converged {f'in {conv:.1f} s' if conv is not None else 'NEVER'}"
                     f", {len(res.violations)} violation(s)")
            if res.violations:
                self._keep_evidence(sched.name)
            self._report_history_so_far()
            if res.t_converged is not None:
                self._report_lost_writes_so_far(sched.name)
                full = self._db_volume_full()
                if full:
                    self._abort(sched.name, full)
                    break
                continue
            try:  # three rounds of convergence at most, and the restarts between them
                with time_limit(3 * bound + 2 * STEP_SLACK, f"repair after schedule {sched.name}"):
                    repaired = self.repair(sched.name)
            except Overran as e:
                self._abort(sched.name, str(e))
                break
            except Exception as e:
                self.say("".join(traceback.format_exception(e))[-4000:])
                self._abort(sched.name, f"the harness failed in the repair: {type(e).__name__}: {e}")
                break
            if not repaired:
                self._abort(sched.name, f"schedule {sched.name} did not converge within {bound:g} s,"
                                        " not even after power-cycling the data nodes")
                break

    def _db_volume_full(self, limit: float = 0.9) -> str | None:
        """The leader's DB file system, when it is more than `limit` full. A full disk
        wedges MariaDB (it waits for space, commits hang): torture 56/57 ran into it
        after 240 schedules on a 256 MiB volume and it looked like a failed failover."""
        lead = self._db_vip_holder()
        if lead not in DATA_NODES:
            return None
        try:
            mnt = self.lab.host_dir(lead) / "data" / self.stack.cluster_config().database.mountpoint
            st = os.statvfs(mnt)
        except OSError:
            return None
        used = 1 - st.f_bavail / st.f_blocks if st.f_blocks else 0.0
        if used <= limit:
            return None
        return (f"the DB volume on {lead} is {used:.0%} full ({st.f_bavail * st.f_frsize >> 20} MiB left):"
                " the campaign stops before the database wedges; give it more room with --volume-size")

    def _report_history_so_far(self) -> None:
        """Print the two-writer and VIP violations of the history so far that were not
        printed yet (the verdict still comes from the check at the campaign's end)."""
        spans = [(r.schedule.name, r.t_start, r.t_end) for r in self.results]
        try:
            found = event_violations(self.lab.events.read(), spans)
        except (OSError, ValueError, KeyError) as e:
            self.say(f"  history check failed: {e}")
            return
        for v in found:
            key = (v["check"], v["what"])
            if key not in self._history_reported:
                self._history_reported.add(key)
                self.say(f"  history check: [{v['schedule']}] {v['check']}: {v['what']}")

    def _report_lost_writes_so_far(self, name: str) -> None:
        """Look up the writes acknowledged since the last look (the verdict still
        comes from reading the whole table back at the end)."""
        if self._acks is None:
            return
        try:
            self._acks.run()
        except (LabError, ValueError) as e:
            why = str(e) if len(str(e)) <= 300 else f"{str(e)[:100]} ... {str(e)[-200:]}"  # not the query
            self.say(f"  history check: [{name}] could not look up the acknowledged writes: {why}")
        # what every batch found missing, also those before a batch whose query failed
        lost = self._acks.missing[self._missing_seen:]
        self._missing_seen = len(self._acks.missing)
        if lost:
            self.say(f"  history check: [{name}] lost-write: {ackcheck.describe(lost)}")
            self.missing_at_lookup += [{"schedule": name, "id": r["id"], "acked": r["acked"]} for r in lost]

    def _abort(self, name: str, why: str) -> None:
        self.aborted = why
        self.lab.events.record("aborted", schedule=name, why=why)
        self.say(f"campaign aborted: {why}")

    def _keep_evidence(self, name: str) -> None:
        if self.opts.evidence_dir is None:
            return
        dest = self.opts.evidence_dir / name.replace(":", "-")
        try:
            kept = evidence.keep_tails(self.lab.spec.dir, dest)
        except OSError as e:
            self.say(f"  evidence not kept: {e}")
            return
        self.say(f"  evidence: the end of {len(kept)} logs in {dest}")

    def repair(self, name: str) -> bool:
        """After a schedule that never converged (already a violation), what an operator
        would do, so the next schedules start from a working cluster: first resolve the
        volume by hand (a split brain: the Secondary discards its data; a Failed disk
        is resynced from an UpToDate peer, else attached again); then power-cycle the
        data nodes whose agent is not a healthy member; then both, one at a time.
        True once the cluster converged."""
        if self._resolve_volume(name) and self.converge(self.opts.converge_bound) is not None:
            return True
        try:
            rows = {n["node"]: n for n in self.stack.status()["nodes"]}
            stuck = [n for n in DATA_NODES if not (rows[n]["online"] and rows[n]["healthy"])]
        except (LabError, json.JSONDecodeError, KeyError):
            stuck = []
        for group in ([stuck] if stuck else []) + [list(DATA_NODES)]:
            for host in group:
                self.lab.events.record("repair", schedule=name, host=host, why="no convergence")
                self.say(f"  repair: power-cycling {host}")
                with contextlib.suppress(LabError):
                    if host not in self.lab.read_state()["down"]:
                        self.lab.faults.crash(host)
                    self.nemesis.restart(host)
                    if self.stack.volume_status(host)["disk"] == "Failed":
                        self.nemesis.recover_failed_disk(host)
            if self.converge(self.opts.converge_bound) is not None:
                return True
        return False

    def run_schedule(self, sched: Schedule) -> ScheduleResult:
        ev = self.lab.events
        t0 = monotonic()
        res = ScheduleResult(sched, t0)
        ev.record("schedule", schedule=sched.name, phase="start", plan=sched.to_json())
        actions = sorted([(f.start, 0, i) for i, f in enumerate(sched.faults)] +
                         [(f.end, 1, i) for i, f in enumerate(sched.faults)])
        applied: dict[int, dict[str, Any]] = {}
        for at, heal, i in actions:
            delay = t0 + at - monotonic()
            if delay > 0:
                time.sleep(delay)
            f = sched.faults[i]
            tag = {"schedule": sched.name, "fault": i, "fault_kind": f.kind, "describe": f.describe()}
            if not heal:
                t = monotonic()
                if self.nemesis.apply(f, tag):
                    applied[i] = {"index": i, "kind": f.kind, "describe": f.describe(), "start": t}
            elif i in applied:
                self.nemesis.heal(f, tag)
                applied[i]["end"] = monotonic()
        delay = t0 + sched.duration - monotonic()
        if delay > 0:
            time.sleep(delay)
        res.t_faults_end = monotonic()
        try:
            self.nemesis.heal_all()
        except LabError as e:
            res.violations.append(f"healing failed: {e}")
        res.t_healed = monotonic()
        for a in applied.values():
            a.setdefault("end", res.t_healed)
        res.faults = list(applied.values())
        ev.record("schedule", schedule=sched.name, phase="healed")
        res.t_converged = self.converge(self.opts.converge_bound)
        if res.t_converged is None:
            res.violations.append(f"no full redundancy within {self.opts.converge_bound:g} s after healing:"
                                  f" {self._last_state}")
        else:
            ev.record("converged", schedule=sched.name, seconds=round(res.t_converged - res.t_healed, 3))
            res.verify = self.verify()
            res.violations += settled_violations(res.t_converged - res.t_healed, res.verify,
                                                 self.opts.converge_bound)
        res.t_end = monotonic()
        ev.record("schedule", schedule=sched.name, phase="end", violations=res.violations)
        return res

    # --- convergence -------------------------------------------------------------------------
    _last_state: str = ""

    def _resolve_volume(self, name: str) -> bool:
        acted = False
        for host in DATA_NODES:
            try:
                vs = self.stack.volume_status(host)
                cmd = None
                if vs["role"] == "Secondary" and vs["disk"] == "Failed":
                    cmd = "invalidate" if self.nemesis.peer_up_to_date(host) else "attach"
                elif vs["role"] == "Secondary" and vs["peer"]["connection"] == "StandAlone":
                    cmd = "discard-my-data"
                elif vs["peer"]["connection"] == "StandAlone":
                    cmd = "connect"
                if cmd:
                    self.lab.events.record("repair", schedule=name, host=host, why=f"volume {cmd}")
                    self.say(f"  repair: volume {cmd} on {host}")
                    self.stack.tandem(host, "volume", cmd, "db")
                    acted = True
            except (LabError, json.JSONDecodeError, KeyError):
                continue
        return acted

    def converged(self) -> bool:
        """One leader with its group running, the other node a healthy replica, both
        disks UpToDate and Connected, the DB and the API answering on their VIPs,
        each VIP on exactly one host (the DB VIP on the leader)."""
        st = self.stack.status()
        lead = (st.get("leader") or {}).get("node")
        rows = {n["node"]: n for n in st["nodes"]}
        if lead is None or rows[lead]["role"] != "Leader" or not all(r["healthy"] for r in rows.values()):
            nodes = [(n, r["role"], r["healthy"]) for n, r in rows.items()]
            self._last_state = f"leader {lead}, nodes {nodes}"
            return False
        for n in DATA_NODES:
            vs = self.stack.volume_status(n)
            role = "Primary" if n == lead else "Secondary"
            if vs["disk"] != "UpToDate" or vs["peer"]["connection"] != "Connected" or vs["role"] != role:
                self._last_state = f"{n}: {vs['role']} {vs['disk']} {vs['peer']['connection']}"
                return False
        assert self.watch is not None
        holders = self.watch.snapshot("converge")
        if holders.get(self.stack.vip) != [lead] or len(holders.get(self.stack.api_vip, [])) != 1:
            self._last_state = f"VIP holders {holders}"
            return False
        if not self.stack.db_ping():
            self._last_state = "DB VIP does not answer"
            return False
        if self._writes_since is not None and not self._writer_acked_since(self._writes_since):
            # db_ping asks from the root namespace; the writer is the client's seat (a
            # client that missed the VIP's announcement can still be sending elsewhere)
            self._last_state = "the writer has acknowledged nothing since healing"
            return False
        if self._writes_since is not None and self.load is not None and self.load.alive() \
                and self.load.last_success < self._writes_since:
            # the job checks hold for want of jobs otherwise (review 30); a load whose
            # workers died is a violation of its own (`workload_died`)
            self._last_state = "the API load has seen no job succeed since healing"
            return False
        try:  # from the operator's seat (the root namespace reaches the public bridge)
            code = self._http.get(f"http://{self.stack.api_vip}:{API_PORT}/health", timeout=5).status_code
        except requests.RequestException as e:
            code = repr(e)[:120]
        if code != 200:
            self._last_state = f"API VIP does not answer: {code}"
            return False
        return True

    _writes_since: float | None = None

    def _writer_acked_since(self, t: float) -> bool:
        """The writer's log (its last few KiB) holds an ack made after `t`."""
        assert self.writer_log is not None
        try:
            with open(self.writer_log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                lines = f.read().splitlines()[1:]
        except OSError:
            return False
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if "acked" in rec:
                    return rec["acked"] > t
        return False

    def converge(self, bound: float, writer: bool = True) -> float | None:
        """Until converged (see `converged`), at most `bound` seconds; with `writer`,
        the client's writer must also have written since this call."""
        deadline = monotonic() + bound
        self._writes_since = monotonic() if writer else None
        next_census = monotonic() + 10
        while monotonic() < deadline:
            try:
                if self.converged():
                    return monotonic()
            except (LabError, json.JSONDecodeError, KeyError, StopIteration) as e:
                self._last_state = str(e)[:300]
            if monotonic() > next_census:  # a daemon that died meanwhile would block it forever
                self.nemesis.census()
                next_census = monotonic() + 10
            time.sleep(0.5)
        return None

    def verify(self) -> dict[str, Any]:
        """Online verify on the Primary: block checksums of both disks compared."""
        last = ""
        for _ in range(3):
            try:  # the DCS may be unreachable for a moment (a daemon died: the census restarts it)
                lead = self.stack.leader()
            except (LabError, json.JSONDecodeError) as e:
                lead, last = None, str(e)[-300:]
            if lead is not None:
                proc = self.stack.tandem(lead, "volume", "verify", "db", "--json", check=False,
                                         timeout=VERIFY_TIMEOUT)
                try:
                    return {**json.loads(proc.stdout), "node": lead}
                except json.JSONDecodeError:
                    last = (proc.stderr or proc.stdout).strip()[-300:]
            else:
                last = last or "no leader"
            time.sleep(2)
            if "role changed" in last or "link is closed" in last:
                # A failover during the run (a role change, or a forced demotion that reset
                # the link: torture 108:72, a lease lost to load after convergence): once it
                # settled, again. Identical disks are checked on a settled cluster.
                self.converge(self.opts.converge_bound, writer=False)
        return {"error": last}

    # --- the end -------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Stop the workload and check the whole history."""
        assert self.load is not None and self.watch is not None and self.writer_log is not None
        self.load.stop()
        self.lab.stop("client", "writer")
        if self.aborted:  # one more chance to read the history back
            try:
                with time_limit(self.opts.converge_bound + STEP_SLACK, "the last heal and convergence"):
                    with contextlib.suppress(LabError):
                        self.nemesis.heal_all()
                    self.converge(self.opts.converge_bound, writer=False)  # the writer is stopped
            except (Overran, LabError) as e:
                self.aborted += f"; then {e}"
        jobs = self.load.final_status(timeout=120)
        self.watch.stop()
        if self.writer_log is not None and self.writer_log.exists():
            acks, errors = read_log(str(self.writer_log))
        else:  # stopped before the writer opened its log (a STOP during the set-up)
            acks, errors = [], []
            if self.results:
                self._abort("finish", f"the writer left no log ({self.writer_log})")
        stored: set[str] | None
        try:
            stored = {r[0] for r in self.stack.query("SELECT id FROM tandem.acked")}
        except LabError:
            stored = None
        db_jobs = self._db_jobs(timeout=120)
        events = self.lab.events.read()
        effects = self.stack.effects()
        not_recorded = lost_lab_events(self.lab.host_dir(h.name) / "log" for h in self.lab.spec.hosts)
        self.history = {"stored": sorted(stored) if stored is not None else None, "jobs": jobs,
                        "effects": effects, "db_jobs": db_jobs,
                        "missing_at_lookup": self.missing_at_lookup, "not_recorded": not_recorded}
        return analyse(events, acks, errors, stored, jobs, effects, self.results,
                       self.opts, self.aborted, db_jobs, self.missing_at_lookup,
                       jobs_unread=db_jobs is None, not_recorded=not_recorded)

    def _db_jobs(self, timeout: float) -> list[dict] | None:
        """Every job in the management database, once none is pending (or at
        `timeout`): also those the clients never heard back about. "vm" is the job's
        instance_id: the VM's id, for a deploy the new VM's (what the effects and the
        clients' jobs name it by)."""
        deadline = monotonic() + timeout
        rows: list[dict] | None = None
        while True:
            with contextlib.suppress(LabError, json.JSONDecodeError, ValueError, IndexError):
                rows = [{"jobid": str(r[0]), "status": int(r[1]), "command": str(r[2]), "vm": str(r[3])}
                        for r in self.stack.query_cloud("SELECT id, status, cmd, instance_id FROM async_job")]
            if (rows is not None and all(r["status"] != 0 for r in rows)) or monotonic() > deadline:
                return rows
            time.sleep(1.0)

    def teardown(self) -> None:
        for part in (self.load, self.watch):
            if part is not None:
                with contextlib.suppress(Exception):  # teardown goes on
                    part.stop()


SETTLED_CHECKS = ("full redundancy only", "online verify")
"""How the violations of `settled_violations` begin (a recheck replaces them)."""


def settled_violations(converge_s: float, verify: dict[str, Any], bound: float) -> list[str]:
    """What a schedule that converged owes: full redundancy within `bound` seconds of
    healing (the last look may begin in time and end late), and both disks identical."""
    late = [f"full redundancy only {converge_s:.1f} s after healing (bound {bound:g} s)"] \
        if converge_s > bound else []
    return late + verify_violations(verify)


def verify_violations(verify: dict[str, Any]) -> list[str]:
    """What an online verify's result says against "both disks identical": an error,
    blocks that differ, or a run that did not compare the whole volume."""
    if verify.get("error"):
        return [f"online verify failed: {verify['error']}"]
    if verify.get("out_of_sync_blocks"):
        return [f"online verify: {verify['out_of_sync_blocks']} blocks differ between the disks"
                " after healing"]
    if "out_of_sync_blocks" not in verify or not verify.get("finished") \
            or verify.get("done_bytes") != verify.get("total_bytes"):
        return [f"online verify did not compare the whole volume: {verify.get('done_bytes')} of"
                f" {verify.get('total_bytes')} bytes, finished: {verify.get('finished')}"]
    return []


Span = tuple[str, float, float | None]
"""A schedule's name, start and end on the lab clock."""


def _within(t: float, spans: list[Span]) -> str | None:
    for name, start, end in spans:
        if start <= t <= (end or float("inf")):
            return name
    return None


def history_violations(events: list[dict], acks: list[dict], stored: set[str] | None, jobs: list[dict],
                       effects: list[dict], db_jobs: list[dict] | None, spans: list[Span],
                       missing_at_lookup: list[dict] | None = None, jobs_unread: bool = False,
                       not_recorded: list[str] | None = None) -> list[dict[str, Any]]:
    """The checks on the whole history (also run again on a saved campaign by
    `tandem lab torture-recheck`): lost writes, two writers, two VIP holders, jobs.

    `missing_at_lookup`: acknowledged writes a lookup through the DB VIP did not find
    after a schedule converged. Each is a violation even if the final read finds it:
    a client read the database without it (a stale primary, two databases).
    `jobs_unread`: the campaign could not read the management database's jobs back
    (`db_jobs` is then None): a violation, for what only they show went unchecked.
    `not_recorded`: the log lines of processes that could not record a lab event
    (`lost_lab_events`): the history has a hole, which every check would pass."""
    violations = event_violations(events, spans)
    violations += [{"schedule": None, "check": "history", "what": f"a lab event was not recorded: {line}"}
                   for line in not_recorded or ()]
    if stored is None:
        violations.append({"schedule": None, "check": "lost-write",
                           "what": "the table could not be read back: acknowledged writes unverified"})
    outside = checker.acks_outside_writable(acks, events)
    for a, node in outside[:20]:
        violations.append({"schedule": _within(a["acked"], spans), "check": "two-writers",
                           "what": f"acknowledged id {a['id']} was committed by {node} at"
                                   f" {a['sent']:.3f}-{a['acked']:.3f}, outside every interval in"
                                   f" which {node}'s volume was writable (a term the history missed)"})
    if len(outside) > 20:
        violations.append({"schedule": None, "check": "two-writers",
                           "what": f"... and {len(outside) - 20} more acknowledged writes outside"
                                   " their node's writable intervals"})
    acked_at = {a["id"]: a.get("acked") for a in acks}
    lost_at_end = checker.lost_writes(acks, stored if stored is not None else {a["id"] for a in acks})
    for lost in lost_at_end:
        t = acked_at.get(lost)
        violations.append({"schedule": None if t is None else _within(t, spans), "check": "lost-write",
                           "what": f"acknowledged id {lost} missing"})
    for m in missing_at_lookup or ():
        if m["id"] not in lost_at_end:
            violations.append({"schedule": m["schedule"], "check": "lost-write",
                               "what": f"acknowledged id {m['id']} missing when looked up after schedule"
                                       f" {m['schedule']} (present at the end: a stale read)"})
    if jobs_unread:
        violations.append({"schedule": None, "check": "jobs",
                           "what": "the management database's jobs could not be read back: jobs the"
                                   " clients never heard of, and jobs without an effect, unchecked"})
    for v in checker.job_violations(jobs, effects, db_jobs, checker.wall_offsets(events)):
        violations.append({"schedule": None, "check": "jobs", "what": v})
    return violations


def idle_api_violations(healed: list[tuple[str, float, float]], jobs: list[dict]) -> list[dict[str, Any]]:
    """Every job check holds for want of jobs (review 30): an API load whose every
    submission failed, or whose every job failed, went on looping, and the
    campaign passed. So a schedule converges only once the client has seen a job
    succeed since healing (`converged`), and the history shows it: for each
    schedule that converged (`healed`: name, healed, end), a job the client saw
    succeed between its healing and its end (`seen`: what the client was told
    then). Histories from before the rule (no `seen`) ran without it: not judged."""
    if not any(j.get("seen") is not None for j in jobs):
        return []
    done = sorted(float(j["done"]) for j in jobs if j.get("done") is not None and j.get("seen") == 1)
    out = []
    for name, t_healed, t_end in healed:
        k = bisect.bisect_left(done, t_healed)
        if k == len(done) or done[k] > t_end:
            out.append({"schedule": name, "check": "jobs",
                        "what": f"the API load saw no job succeed between healing ({t_healed:.3f}) and the"
                                f" schedule's end ({t_end:.3f}): the job checks held for want of jobs"})
    return out


def event_violations(events: list[dict], spans: list[Span]) -> list[dict[str, Any]]:
    """The checks that need only the event log (two writers, two VIP holders): also run
    after every schedule, on the history so far, so that a campaign says at once what
    the end-of-campaign check will say (an interval's end may be recorded only
    schedules later: torture 86:38 was first reported at the campaign's end)."""
    violations: list[dict[str, Any]] = []
    for ev in events:
        if ev["kind"] == "vipwatch_failed":
            violations.append({"schedule": _within(ev["t"], spans), "check": "two-vip-holders",
                               "what": f"the VIP watcher of {ev['host']} failed ({ev['error']}):"
                                       " VIP holders there went unobserved"})
        elif ev["kind"] == "workload_died":
            violations.append({"schedule": _within(ev["t"], spans), "check": "jobs",
                               "what": f"API client {ev['worker']} died ({ev['why']}): no jobs submitted"
                                       " by it from then on"})
    for a, b in checker.overlapping_writers(events):
        violations.append({"schedule": _within(max(a.start, b.start), spans), "check": "two-writers",
                           "what": f"{a.node} writable {a.start:.3f}-{a.end:.3f} and {b.node}"
                                   f" {b.start:.3f}-{b.end:.3f}"})
    for addr, a, b in checker.double_vip_holders(events, VIP_TOLERANCE):
        violations.append({"schedule": _within(max(a.start, b.start), spans), "check": "two-vip-holders",
                           "what": f"{addr} on {a.node} {a.start:.3f}-{a.end:.3f} and on {b.node}"
                                   f" {b.start:.3f}-{b.end:.3f}"})
    return violations


def analyse(events: list[dict], acks: list[dict], errors: list[dict], stored: set[str] | None,
            jobs: list[dict],
            effects: list[dict], results: list[ScheduleResult], opts: Options,
            aborted: str | None, db_jobs: list[dict] | None = None,
            missing_at_lookup: list[dict] | None = None, jobs_unread: bool = False,
            not_recorded: list[str] | None = None) -> dict[str, Any]:
    """The campaign's verdict as JSON-ready data (pure: the tests feed it histories).
    A campaign that stopped early (`aborted`) counts as a violation: its last
    schedule never finished, and nothing after it was tried."""
    violations: list[dict[str, Any]] = []
    if aborted:
        violations.append({"schedule": None, "check": "aborted", "what": aborted})
    for r in results:
        violations += [{"schedule": r.schedule.name, "check": "convergence", "what": v} for v in r.violations]
    spans = [(r.schedule.name, r.t_start, r.t_end) for r in results]
    violations += history_violations(events, acks, stored, jobs, effects, db_jobs, spans, missing_at_lookup,
                                     jobs_unread, not_recorded)
    violations += idle_api_violations([(r.schedule.name, r.t_healed, r.t_end) for r in results
                                       if r.t_converged is not None], jobs)
    ack_times = sorted(a["acked"] for a in acks)
    faults = []
    for r in results:
        for f in r.faults:
            u = checker.unavailability(ack_times, f["start"], f["end"])
            faults.append({**f, "schedule": r.schedule.name, "unavailable_s": u})
    by_kind: dict[str, list[float]] = {}
    for f in faults:
        by_kind.setdefault(f["kind"], []).append(f["unavailable_s"])
    sched_unavail = [checker.unavailability(ack_times, r.t_start, r.t_converged or r.t_end) for r in results]
    return {
        "seed": opts.seed, "duration": opts.duration, "schedules_planned": opts.schedules,
        "converge_bound": opts.converge_bound,  # what `torture-recheck` judges convergence by
        "schedules_run": len(results), "aborted": aborted,
        # every fault skipped (its target gone): such a schedule tested only the workload
        "schedules_without_faults": sum(not r.faults for r in results),
        "writes": {"acknowledged": len(acks), "errors": len(errors), "stored": len(stored or ())},
        "jobs_in_db": None if db_jobs is None else len(db_jobs),
        "deaths": [{k: e[k] for k in ("t", "host", "name", "pid", "how")} for e in events
                   if e["kind"] == "proc_died"],
        "jobs": {"accepted": len(jobs), "succeeded": sum(j["status"] == 1 for j in jobs),
                 "failed": sum(j["status"] == 2 for j in jobs), "effects": len(effects)},
        "faults_by_kind": {k: len(v) for k, v in sorted(by_kind.items())},
        "unavailability_by_kind": {k: checker.percentiles(v) for k, v in sorted(by_kind.items())},
        "unavailability_per_schedule": checker.percentiles(sched_unavail),
        "convergence_s": checker.percentiles([r.converge_seconds for r in results
                                              if r.converge_seconds is not None]),
        "violations": violations,
        "schedules": [{**r.schedule.to_json(), "t_start": r.t_start, "t_healed": r.t_healed,
                       "t_end": r.t_end, "converge_s": r.converge_seconds, "verify": r.verify,
                       "faults_applied": r.faults, "violations": r.violations,
                       "unavailable_s": u} for r, u in zip(results, sched_unavail, strict=True)],
        "faults": faults,
    }
