"""The job simulation: management servers owning, executing and taking over async jobs.

**Real**: the ownership rules of ``tandem.mgmt.jobcore`` (``Lease``, ``may_commit``,
``takes_over``, ``runnable``: the predicates next to the SQL ``jobs.JobManager``
executes) and the VM plans of ``tandem.mgmt.vmstates.plan``.

**Modelled**: ``JobManager`` (heartbeat loop with takeover, dispatch loop with the
``_ended`` set, job execution as ``vmjobs.run_plan`` and ``JobContext``), MariaDB
(linearizable; a statement applies when it arrives; ``NOW(6)`` is true time; a
call whose answer is lost raises ``DbUnavailable`` although it may have applied),
``HostClient`` (retries with backoff within a budget, busy answers retried) and the
simulated host (``simhost``: one effect per request id, a repeated id replays or
joins the first, two requests on one VM at once are a conflict). Servers run as
coroutines on :mod:`tandem.sim.kernel`'s clock; a paused server's events are held.

Invariants:

- ``completed_twice``: a job's final status is written once;
- ``effect_twice``: the host applies one effect per job (request ids are job ids);
- ``not_completed``: every job in the database is completed once the faults healed
  (bounded by ``SETTLE``): none is lost;
- ``interleaved``: two requests on one VM never run at once on the host, and the
  database writes of jobs on one VM follow their acceptance order, never mixed;
- ``state_mismatch``: at the end, the database's VM state is the host's (except Error);
- ``failed_but_applied``: no job is reported failed while the host applied its
  operation (a job whose request may have reached the host waits and asks again:
  ``jobcore.may_fail_unreached``, the ``host_sent`` mark, ``retry_pause``).
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tandem.mgmt import jobcore
from tandem.mgmt.jobcore import FAILED, PENDING, SUCCEEDED, Lease, QueuedJob
from tandem.mgmt.vmstates import VmState, plan
from tandem.sim.kernel import Sim
from tandem.sim.schedule import Result
from tandem.sim.world import Fault, Violation

SERVERS = ("mgmt1", "mgmt2", "mgmt3")
VMS = ("vm1", "vm2", "vm3")
DEAD_AFTER = 1.0
INTERVAL = DEAD_AFTER / 4
POLL = 0.2
DB_TIMEOUT = 0.5
HOST_TIMEOUT = 2.0
RETRY_BUDGET = 3.0
NET = (0.001, 0.003)
FAULT_WINDOW = (0.5, 5.0)
SETTLE = 10.0
KIND_WEIGHTS = {"crash": 3, "pause": 3, "partition": 3, "db_down": 1}
DURATION = (0.1, 3.0)
#: deliberately broken variants; "a+b" breaks both (the host fence and the
#: host_sent rule each stop a paused owner's late request: only both together fail)
VARIANTS = ("none", "no_guard", "takeover_live", "no_queue", "fresh_request_id", "no_host_fence",
            "fail_unknown", "no_host_fence+fail_unknown")
COMMANDS = ("start", "stop", "reboot", "start", "stop", "reboot", "start", "stop", "destroy")


class LostJob(Exception):
    pass


class DbUnavailable(Exception):
    pass


class HostUnavailable(Exception):
    def __init__(self, maybe_delivered: bool):
        super().__init__(maybe_delivered)
        self.maybe_delivered = maybe_delivered


class Sleep(NamedTuple):
    dt: float


class Db(NamedTuple):
    fn: Any  #: called with the model database at the instant the statement arrives


class HostCall(NamedTuple):
    rid: str
    op: str
    vm: str
    valid_until: float | None  #: Lease.requests_valid_until (None: no expiry, a broken variant)


class Wake(NamedTuple):
    timeout: float


@dataclass
class JobRow:
    id: str
    seq: int
    cmd: str
    vm: str
    owner: str
    status: int = PENDING
    takeovers: int = 0
    completions: int = 0
    executed_by: str | None = None
    host_sent: bool = False


@dataclass
class ModelDb:
    servers: dict[str, float] = field(default_factory=dict)  # id -> heartbeat
    jobs: dict[str, JobRow] = field(default_factory=dict)
    vms: dict[str, str | None] = field(default_factory=dict)
    seq: int = 0


class Host:
    """simhost.SimHost: effects once per request id, conflicts on a busy VM."""

    def __init__(self, world: JobWorld):
        self.world = world
        self.vms: dict[str, str] = {}
        self.requests: dict[str, dict] = {}
        self.inflight: dict[str, list] = {}
        self.busy: dict[str, str] = {}
        self.effects: dict[str, int] = {}  # job id -> effects applied

    def request(self, rid: str, op: str, vm: str, valid_until: float | None, reply: Any) -> None:
        known = rid in self.requests or rid in self.inflight
        if valid_until is not None and self.world.sim.now > valid_until and not known:
            reply({"expired": True})  # simhost: the sender's job lease ran out
            return
        if rid in self.requests:
            reply(dict(self.requests[rid], replayed=True))
            return
        if rid in self.inflight:
            self.inflight[rid].append(reply)
            return
        if vm in self.busy:
            self.world.violate("interleaved", f"host: {op} {vm} ({rid}) while {self.busy[vm]} runs on it")
            reply({"busy": True})
            return
        self.busy[vm] = rid
        self.inflight[rid] = [reply]
        w = self.world
        w.sim.after(w.sim.rng.uniform(0.1, 0.8), self._done, rid, op, vm)

    def _done(self, rid: str, op: str, vm: str) -> None:
        cur = self.vms.get(vm)
        if op == "create" and cur is not None:
            result = {"ok": False, "error": "already exists", "state": cur}
        elif op != "create" and cur is None:
            result = {"ok": False, "error": "does not exist", "state": None}
        elif op == "reboot" and cur != "Running":
            result = {"ok": False, "error": "not Running", "state": cur}
        else:
            state = {"create": "Running", "start": "Running", "stop": "Stopped", "reboot": cur,
                     "destroy": None}[op]
            if state is None:
                self.vms.pop(vm, None)
            else:
                self.vms[vm] = state
            job = rid.split("#")[0]
            self.effects[job] = self.effects.get(job, 0) + 1
            if self.effects[job] > 1:
                self.world.violate("effect_twice", f"host applied {op} of job {job} again ({rid})")
            self.world.sim.log("host", f"{op} {vm} ({rid}) -> {state}")
            result = {"ok": True, "state": state}
        self.requests[rid] = result
        del self.busy[vm]
        for reply in self.inflight.pop(rid):
            reply(result)


class Server:
    """One management server process: JobManager's loops as coroutines."""

    def __init__(self, world: JobWorld, sid: str):
        self.world, self.sid = world, sid
        self.sim = world.sim
        self.alive = True
        self.paused = False
        self.held: list[tuple] = []
        self.lease = Lease(DEAD_AFTER, INTERVAL)
        self.running: set[str] = set()
        self.ended: set[str] = set()
        self.unknown: dict[str, tuple[int, float]] = {}  # job id -> (runs left pending, not before)
        self.wake = False
        self.waiter: tuple[list, int] | None = None

    # --- a tiny coroutine runner ---------------------------------------------------
    def spawn(self, gen: Generator) -> None:
        task = [gen, 0]
        self.sim.after(0.0, self._deliver, task, 0, None, None)

    def _deliver(self, task: list, tok: int, value: Any, exc: BaseException | None) -> None:
        if not self.alive:
            return
        if self.paused:
            self.held.append((task, tok, value, exc))
            return
        if task[1] != tok:
            return
        task[1] += 1
        try:
            cmd = task[0].throw(exc) if exc is not None else task[0].send(value)
        except StopIteration:
            return
        task[1] += 1
        tok = task[1]
        w, sim = self.world, self.sim
        if type(cmd) is Sleep:
            sim.after(cmd.dt, self._deliver, task, tok, None, None)
        elif type(cmd) is Wake:
            if self.wake:
                sim.after(0.0, self._deliver, task, tok, None, None)
            else:
                self.waiter = (task, tok)
                sim.after(cmd.timeout, self._deliver, task, tok, None, None)
        elif type(cmd) is Db:
            sim.after(DB_TIMEOUT, self._deliver, task, tok, None, DbUnavailable("timeout"))
            w.send(self.sid, self._at_db, task, tok, cmd.fn)
        elif type(cmd) is HostCall:
            sim.after(HOST_TIMEOUT, self._deliver, task, tok, None, TimeoutError())
            w.send(self.sid, w.host.request, cmd.rid, cmd.op, cmd.vm, cmd.valid_until,
                   lambda r, task=task, tok=tok: w.send(self.sid, self._deliver, task, tok, r, None))

    def _at_db(self, task: list, tok: int, fn: Any) -> None:
        w = self.world
        if w.db_down:
            return
        try:
            result, exc = fn(w.db), None
        except LostJob as e:
            result, exc = None, e
        w.send(self.sid, self._deliver, task, tok, result, exc)

    def set_wake(self) -> None:
        self.wake = True
        if self.waiter is not None:
            task, tok = self.waiter
            self.waiter = None
            self.sim.after(0.0, self._deliver, task, tok, None, None)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        held, self.held = self.held, []
        for args in held:
            self.sim.after(0.0, self._deliver, *args)

    # --- JobManager ------------------------------------------------------------------
    def start(self) -> None:
        self.spawn(self._start())

    def _start(self) -> Generator:
        while True:
            started = self.sim.now
            try:
                yield Db(self._register)
                break
            except DbUnavailable:
                yield Sleep(INTERVAL)
        self.lease.beat_done(started, self.sim.now)
        self.spawn(self._heartbeat_loop())
        self.spawn(self._takeover_loop())
        self.spawn(self._dispatch_loop())

    def _register(self, db: ModelDb) -> None:
        db.servers[self.sid] = self.world.sim.now

    def _heartbeat_loop(self) -> Generator:
        while True:
            started = self.sim.now
            self.lease.beat_begun(started)
            try:
                yield Db(self._register)
                self.lease.beat_done(started, self.sim.now)
            except DbUnavailable:
                self.lease.beat_failed()
            yield Sleep(INTERVAL)

    def _takeover_loop(self) -> Generator:
        """As in JobManager: apart from the heartbeat."""
        while True:
            yield Sleep(INTERVAL)
            try:
                if self.lease.may_take_over(self.sim.now):
                    taken = yield Db(self._take_over)
                    if taken:
                        self.sim.log(self.sid, f"took over {taken} job(s)")
                        self.set_wake()
            except DbUnavailable:
                pass

    def _take_over(self, db: ModelDb) -> int:
        now, n = self.world.sim.now, 0
        if not self.lease.may_take_over(now):
            return 0
        for j in db.jobs.values():
            hb = db.servers.get(j.owner)
            if self.world.broken("takeover_live"):  # BROKEN: the owner's heartbeat is not checked
                hb = None
            if jobcore.takes_over(j.owner, j.status, self.sid, hb, now, DEAD_AFTER):
                j.owner = self.sid
                j.takeovers += 1
                n += 1
        return n

    def _runnable(self, db: ModelDb) -> list[JobRow]:
        if self.world.broken("no_queue"):  # BROKEN: every pending job of ours runs at once
            return sorted((j for j in db.jobs.values() if j.owner == self.sid and j.status == PENDING),
                          key=lambda j: j.seq)
        rows = [QueuedJob(j.seq, j.vm, j.owner, j.status) for j in db.jobs.values()]
        by_seq = {j.seq: j for j in db.jobs.values()}
        return [by_seq[q.seq] for q in jobcore.runnable(rows, self.sid, 32)]

    def _dispatch_loop(self) -> Generator:
        while True:
            yield Wake(POLL)
            self.wake = False
            if self.lease.fenced(self.sim.now):
                continue
            self.ended = set()
            try:
                rows = yield Db(self._runnable)
            except DbUnavailable:
                continue
            for row in rows:
                if row.id in self.running or row.id in self.ended:
                    continue
                if self.sim.now < self.unknown.get(row.id, (0, 0.0))[1]:
                    continue
                self.running.add(row.id)
                self.spawn(self._execute(row.id, row.cmd, row.vm, row.host_sent))

    # --- executing: vmjobs.run_plan with JobContext's guarded writes -----------------
    def _guarded(self, job_id: str, fn: Any = None, final: int | None = None) -> Any:
        world = self.world

        def apply(db: ModelDb) -> Any:
            j = db.jobs.get(job_id)
            guarded = not world.broken("no_guard")  # BROKEN variant: a dead owner's claim is not fenced
            if guarded and (j is None or not jobcore.may_commit(j.owner, j.status, self.sid)):
                raise LostJob(job_id)
            assert j is not None
            world.db_write(j, self.sid)
            out = fn(db) if fn else None
            if final is not None:
                j.status = final
                j.completions += 1
                j.executed_by = self.sid
                world.completed(j)
            return out
        return apply

    def _execute(self, job_id: str, cmd: str, vm: str, sent_before: bool) -> Generator:
        try:
            state = yield Db(lambda db: db.vms.get(vm))
            p = plan(cmd, state)
            if p.refuse:
                yield Db(self._guarded(job_id, None, FAILED))
                return
            after = p.after
            if p.host_op is not None:
                confirmed = None  # JobContext.confirmed_at
                if p.during is not None and p.during != state:
                    t = self.sim.now
                    yield Db(self._guarded(job_id, _set(vm, p.during)))
                    confirmed = t
                if not sent_before:  # JobContext.host_op: MARK_SENT_SQL before the request leaves
                    t = self.sim.now
                    yield Db(self._guarded(job_id, _mark_sent(job_id)))
                    confirmed = t
                try:
                    result = yield from self._host(job_id, p.host_op, vm, confirmed)
                except HostUnavailable as e:
                    # BROKEN variant fail_unknown: fail although the request may have arrived
                    if (jobcore.may_fail_unreached(sent_before, e.maybe_delivered)
                            or self.world.broken("fail_unknown")):
                        yield Db(self._guarded(job_id, _set(vm, VmState.ERROR), FAILED))
                    else:  # JobManager._keep_pending
                        tries = self.unknown.get(job_id, (0, 0.0))[0]
                        self.unknown[job_id] = (tries + 1, self.sim.now + jobcore.retry_pause(tries))
                        self.world.stats["unknown_outcomes"] += 1
                        self.sim.log(self.sid, f"job {job_id}: host outcome unknown, left pending")
                    return
                gone = p.host_op == "destroy" and "does not exist" in (result.get("error") or "")
                if not result.get("ok") and not gone:
                    known = result.get("state") if result.get("state") in ("Running", "Stopped") else "Error"
                    yield Db(self._guarded(job_id, _set(vm, known), FAILED))
                    return
                if cmd == "deploy":
                    after = VmState(result["state"])
            yield Db(self._guarded(job_id, _set(vm, after, p.removed), SUCCEEDED))
        except LostJob:
            self.world.stats["lost_claims"] += 1
            self.sim.log(self.sid, f"job {job_id}: lost (taken over or finished)")
        except DbUnavailable:
            pass
        finally:
            self.running.discard(job_id)
            self.ended.add(job_id)
            self.set_wake()

    def _host(self, job_id: str, op: str, vm: str, confirmed: float | None) -> Generator:
        """JobContext.host_op + HostClient.op: send only while the job provably is
        ours (Lease.may_send, proving it again after a lease gap), with an expiry the
        host enforces; retry until the host answers, within the budget (one budget
        here, where the real code has one for the lease wait and one for retries)."""
        deadline = self.sim.now + RETRY_BUDGET
        delay = 0.1
        maybe_delivered = False
        self.world.attempts += 1
        rid = job_id if not self.world.broken("fresh_request_id") else f"{job_id}#{self.world.attempts}"
        fence = not self.world.broken("no_host_fence")  # BROKEN variant: host requests are not fenced
        while True:
            now = self.sim.now
            if fence and not self.lease.may_send(now, confirmed):
                if now > deadline:
                    raise HostUnavailable(maybe_delivered)
                until = self.lease.requests_valid_until()
                if until is not None and now < until:
                    yield Db(self._guarded(job_id))  # LostJob when it is no longer ours
                    confirmed = now
                else:
                    yield Sleep(0.1)
                continue
            try:
                result = yield HostCall(rid, op, vm, self.lease.requests_valid_until() if fence else None)
                if result.get("expired"):
                    continue
                if result.get("busy"):
                    raise _Busy
                return result
            except (TimeoutError, _Busy) as e:
                maybe_delivered |= isinstance(e, TimeoutError)  # busy: refused before acting
                if self.sim.now + delay > deadline:
                    raise HostUnavailable(maybe_delivered) from None
                yield Sleep(delay)
                delay = min(delay * 2, 1.0)


class _Busy(Exception):
    pass


def _mark_sent(job_id: str) -> Any:
    def fn(db: ModelDb) -> None:
        db.jobs[job_id].host_sent = True
    return fn


def _set(vm: str, state: Any, removed: bool = False) -> Any:
    def fn(db: ModelDb) -> None:
        if state is not None:
            db.vms[vm] = None if removed else str(state)
    return fn


class JobWorld:
    def __init__(self, seed: int, faults: list[Fault], variant: str = "none"):
        self.sim = Sim(seed)
        self.variant = variant
        self._broken = set(variant.split("+"))
        self.db = ModelDb()
        self.db_down = False
        self.host = Host(self)
        self.cut: dict[str, int] = {s: 0 for s in SERVERS}
        self.down: dict[str, int] = {s: 0 for s in SERVERS}
        self.paused: dict[str, int] = {s: 0 for s in SERVERS}
        self.servers = {s: Server(self, s) for s in SERVERS}
        self.violations: list[Violation] = []
        self.attempts = 0
        self.last_writer: dict[str, int] = {}
        self.stats = {"accepted": 0, "completed": 0, "succeeded": 0, "takeovers": 0, "lost_claims": 0,
                      "unknown_outcomes": 0}
        self.heal = max([f.at + f.duration for f in faults] + [FAULT_WINDOW[1]])
        for f in faults:
            self.sim.at(f.at, self._fault, f, +1)
            self.sim.at(f.at + f.duration, self._fault, f, -1)
        for s in self.servers.values():
            s.start()
        rng = random.Random(seed * 7 + 3)
        t = 0.2
        for vm in VMS:
            self.sim.at(t, self._submit, "deploy", vm)
            t += 0.05
        while t < FAULT_WINDOW[1]:
            t += rng.uniform(0.05, 0.4)
            self.sim.at(t, self._submit, rng.choice(COMMANDS), rng.choice(VMS))

    def violate(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, self.sim.now, detail))
        self.sim.log("CHECK", f"{kind}: {detail}")

    def send(self, sid: str, fn: Any, *args: Any) -> None:
        if self.cut[sid]:
            return
        lo, hi = NET
        self.sim.after(self.sim.rng.uniform(lo, hi), fn, *args)

    def _submit(self, cmd: str, vm: str) -> None:
        """An API call on a server that is up: the job row is inserted with it as owner."""
        up = [s for s in SERVERS if not self.down[s] and not self.paused[s] and not self.cut[s]]
        if not up or self.db_down:
            return
        sid = self.sim.rng.choice(up)
        self.db.seq += 1
        jid = f"j{self.db.seq}"
        if cmd == "deploy":
            self.db.vms[vm] = "Starting"  # the API inserts the VM row with the job
        self.db.jobs[jid] = JobRow(jid, self.db.seq, cmd, vm, sid)
        self.stats["accepted"] += 1
        self.sim.log(sid, f"accepted {jid}: {cmd} {vm}")
        self.servers[sid].set_wake()

    def broken(self, part: str) -> bool:
        return part in self._broken

    def db_write(self, job: JobRow, sid: str) -> None:
        """Every guarded write: jobs of one VM write in acceptance order, never mixed."""
        earlier = [j.id for j in self.db.jobs.values() if j.vm == job.vm and j.seq < job.seq
                   and j.status == PENDING]
        last = self.last_writer.get(job.vm, 0)
        if earlier or last > job.seq:
            self.violate("interleaved", f"{sid} writes for {job.id} ({job.cmd} {job.vm}) while"
                         + (f" {earlier[0]} is still pending" if earlier else f" j{last} wrote already"))
        self.last_writer[job.vm] = max(last, job.seq)

    def completed(self, job: JobRow) -> None:
        self.stats["completed"] += 1
        if job.completions > 1:
            self.violate("completed_twice", f"{job.id} ({job.cmd} {job.vm}) completed again"
                         f" by {job.executed_by}")
        how = "succeeded" if job.status == SUCCEEDED else "failed"
        self.sim.log(job.executed_by or "?", f"{job.id} {how}")

    def _fault(self, f: Fault, d: int) -> None:
        self.sim.log("fault", ("start " if d > 0 else "end ") + str(f))
        s = f.node
        if f.kind == "db_down":
            self.db_down = d > 0
            return
        assert s is not None
        srv = self.servers[s]
        if f.kind == "crash":
            self.down[s] += d
            if d > 0 and self.down[s] == 1:
                srv.alive = False
            elif d < 0 and self.down[s] == 0:
                self.servers[s] = Server(self, s)
                if self.paused[s]:
                    self.servers[s].pause()
                self.servers[s].start()
        elif f.kind == "pause":
            self.paused[s] += d
            if d > 0 and self.paused[s] == 1:
                srv.pause()
            elif d < 0 and self.paused[s] == 0:
                srv.resume()
        elif f.kind == "partition":
            self.cut[s] += d

    def finish(self) -> None:
        for j in sorted(self.db.jobs.values(), key=lambda j: j.seq):
            if j.status == PENDING:
                self.violate("not_completed", f"{j.id} ({j.cmd} {j.vm}, owner {j.owner}) still pending"
                             f" {SETTLE:g} s after the faults healed")
            self.stats["takeovers"] += j.takeovers
            self.stats["succeeded"] += j.status == SUCCEEDED
            if j.status == FAILED and self.host.effects.get(j.id, 0) > 0:
                self.violate("failed_but_applied", f"{j.id} ({j.cmd} {j.vm}) reported failed, but the host"
                             " applied it")
        for vm in VMS:
            mine = self.db.vms.get(vm)
            if mine in ("Destroyed", "Expunging"):
                mine = None  # gone from the host
            if mine != "Error" and mine != self.host.vms.get(vm):
                self.violate("state_mismatch", f"{vm}: database says {mine},"
                             f" host says {self.host.vms.get(vm)}")

    def run(self) -> None:
        self.sim.run(self.heal + SETTLE)
        self.finish()


def generate(seed: int) -> list[Fault]:
    rng = random.Random(seed * 2 + 1)
    kinds, weights = zip(*KIND_WEIGHTS.items(), strict=True)
    out = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choices(kinds, weights)[0]
        node = None if kind == "db_down" else rng.choice(SERVERS)
        dur = DURATION[1] / 3 if kind == "db_down" else DURATION[1]
        at, length = round(rng.uniform(*FAULT_WINDOW), 3), round(rng.uniform(DURATION[0], dur), 3)
        out.append(Fault(kind, node, at, length))
    return sorted(out, key=lambda f: (f.at, f.kind))


def run(seed: int, faults: list[Fault] | None = None, variant: str = "none") -> Result:
    faults = generate(seed) if faults is None else faults
    w = JobWorld(seed, faults, variant)
    w.run()
    return Result(seed, faults, sorted(w.violations, key=lambda v: v.at), w.sim.trace, w.stats["succeeded"],
                  w.stats["takeovers"], w.sim.events, w.heal + SETTLE, stats=dict(w.stats))
