"""Async jobs that survive the death of the management server running them.

The rules, all enforced in MariaDB so that every server sees the same truth:

- **Ownership.** A job row names its `owner`, the server that accepted it. Only
  the owner executes it, and every change a job makes to the database is written
  in a transaction that first locks the job row and checks that the owner is
  still this server and the job still pending (`JobContext.write`). A server
  that lost a job (because others thought it dead) can therefore never commit
  anything for it.
- **Heartbeat lease.** Each server has a `mgmt_server` row whose `heartbeat` it
  sets to the database's `NOW(6)` every `heartbeat_interval`. Times come from the
  database clock only, so server clocks do not matter. A server that could not
  beat for `dead_after` seconds stops starting jobs (it may already be presumed
  dead).
- **Takeover.** Each beat, a server also runs one atomic UPDATE that moves the
  pending jobs of every server whose heartbeat is older than `dead_after` to
  itself. Row locks make each job move to exactly one survivor.
- **Exactly-once effects.** A job may run again after a takeover (or a database
  outage), from the start. Its effects on the hypervisor carry the job id as
  request id, so the host applies each once and replays the first result; its
  database effects commit once, with the final state and status in one
  transaction guarded as above.
- **Unknown is not failed.** Once a job's request may have reached the host
  (in this run, or in an earlier one here or on a server that owned the job
  before: `host_sent` is set in the job row before a request leaves), the
  effect may have happened;
  an error after that (the database's disk failing under the final commit, a
  host that stopped answering mid-request) leaves the job pending, to run again
  after a back-off and learn the first result from the host, instead of
  reporting a failure the host contradicts. Only after `unknown_limit` seconds of
  that does the job fail, saying the outcome is unknown.
- **Per-object queue.** A job is runnable only when it is the oldest pending job
  of its object (`instance_id`), so operations on one VM run one after another in
  the order they were accepted, whichever servers own them; different VMs run in
  parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pymysql

from tandem.mgmt.db import Cursor, Database, DbUnavailable
from tandem.mgmt.envelopes import INTERNAL_ERROR, RESOURCE_UNAVAILABLE, ApiError
from tandem.mgmt.hostclient import HostClient, HostResult, HostUnavailable, RequestExpired
from tandem.mgmt.jobcore import (
    FAILED,
    GUARD_SQL,
    MARK_SENT_SQL,
    PENDING,
    RUNNABLE_SQL,
    SUCCEEDED,
    TAKEOVER_SQL,
    Lease,
    may_commit,
    may_fail_unreached,
    retry_pause,
)

log = logging.getLogger("tandem.mgmt.jobs")

T = TypeVar("T")
__all__ = ["FAILED", "PENDING", "SUCCEEDED", "JobContext", "JobManager", "Lease", "LostJob"]
HOUSEKEEPING_INTERVAL = 60.0


@dataclass
class _Unknown:
    """A job left pending because its host effect may have happened."""

    since: float
    tries: int = 0
    not_before: float = 0.0


class LostJob(Exception):
    """This server no longer owns the job (another server took it over)."""


@dataclass(frozen=True)
class Job:
    id: str
    cmd: str
    instance_type: str
    instance_id: str
    params: dict[str, Any]
    account_id: str
    user_id: str
    takeovers: int
    host_sent: bool = False  #: an earlier run (here or on an earlier owner) may have sent its host request

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(id=row["id"], cmd=row["cmd"], instance_type=row["instance_type"],
                   instance_id=row["instance_id"], params=json.loads(row["params"]),
                   account_id=row["account_id"], user_id=row["user_id"], takeovers=row["takeovers"],
                   host_sent=bool(row.get("host_sent", 0)))


class JobContext:
    """What a job handler may do: owner-guarded DB writes and host operations."""

    def __init__(self, manager: JobManager, job: Job):
        self.manager = manager
        self.job = job
        self.host = manager.host
        self.confirmed_at: float | None = None  #: when a guarded write last proved the job ours
        self.maybe_delivered = False  #: a request of this run may have reached the host
        self._marked = job.host_sent  #: host_sent is set in the job row
        #: what a failure of this job must repair with it (a handler that committed a
        #: transitional state sets it): every path that fails the job uses it
        self.repair_on_failure: Callable[[], Callable[[Cursor], None] | None] | None = None

    @property
    def maybe_applied(self) -> bool:
        """The host may have applied this job's operation (in this run or an earlier one)."""
        return not may_fail_unreached(self.job.host_sent, self.maybe_delivered)

    async def read(self, fn: Callable[[Cursor], T]) -> T:
        return await self.manager.db.read(fn)

    async def write(self, fn: Callable[[Cursor], T]) -> T:
        """Run `fn` in a transaction that commits only while we own the pending job."""
        def guarded(cur: Cursor) -> T:
            self.manager._lock_owned(cur, self.job.id)
            return fn(cur)
        started = time.monotonic()
        out = await self.manager.db.write(guarded)
        self.confirmed_at = started
        return out

    async def host_op(self, op: str, vm: str, spec: dict[str, Any] | None = None) -> HostResult:
        """This job's host request, sent only while the job provably is ours.

        `Lease.may_send`: after any gap in our heartbeat lease (a pause, a DB outage)
        a guarded write proves ownership again first, so a server that was presumed
        dead and whose job was taken over meanwhile gets LostJob instead of acting;
        the expiry the host enforces covers a pause after the request left."""
        lease = self.manager.lease
        budget = self.host.retry_budget
        deadline = time.monotonic() + budget

        def valid_until() -> float | None:
            ok = lease.may_send(time.monotonic(), self.confirmed_at)
            return lease.requests_valid_until() if ok else None

        while True:
            now = time.monotonic()
            if not lease.may_send(now, self.confirmed_at):
                if now > deadline:
                    raise HostUnavailable(f"{op} of {self.job.id}: no valid job lease for {budget:.0f} s",
                                          maybe_delivered=False)
                until = lease.requests_valid_until()
                if until is not None and now < until:
                    await self.write(lambda cur: None)  # LostJob when it is no longer ours
                else:
                    await asyncio.sleep(0.1)  # the heartbeat renews the lease
                continue
            if not self._marked:
                # Recorded before the request can leave, so that every later run,
                # here or on a server that takes the job over, knows it may have.
                await self.write(lambda cur: cur.execute(MARK_SENT_SQL, (self.job.id,)))
                self._marked = True
                continue  # the write took time: look at the lease again
            try:
                result = await self.host.op(self.job.id, op, vm, spec, valid_until=valid_until)
            except RequestExpired as e:
                self.maybe_delivered |= e.maybe_delivered
                if time.monotonic() > deadline:
                    # Every attempt expired although our lease was valid when it left:
                    # the host's clock runs ahead of ours by more than the lease leaves.
                    raise HostUnavailable(
                        f"{op} of {self.job.id}: the host refused every request as expired"
                        f" for {budget:.0f} s; is its clock ahead of this server's? ({e})",
                        maybe_delivered=self.maybe_delivered) from None
                await asyncio.sleep(0.1)
                continue
            except HostUnavailable as e:
                self.maybe_delivered |= e.maybe_delivered
                raise
            self.maybe_delivered = True
            return result

    def unknown_too_long(self) -> bool:
        """This job's host outcome has been unknown for longer than the manager waits."""
        u = self.manager._unknown.get(self.job.id)
        return u is not None and time.monotonic() - u.since > self.manager.unknown_limit

    async def finish(self, fn: Callable[[Cursor], dict[str, Any]]) -> None:
        """Apply the job's final DB changes and mark it succeeded, atomically.

        `fn` returns the job result (e.g. `{"virtualmachine": {...}}`).
        """
        def guarded(cur: Cursor) -> None:
            self.manager._lock_owned(cur, self.job.id)
            result = fn(cur)
            self.manager._complete(cur, self.job.id, SUCCEEDED, 0, result)
        await self.manager.db.write(guarded)

    async def fail(self, error: ApiError, fn: Callable[[Cursor], None] | None = None) -> None:
        """Record the failure (and `fn`'s repairs to the object) atomically."""
        def guarded(cur: Cursor) -> None:
            self.manager._lock_owned(cur, self.job.id)
            if fn:
                fn(cur)
            self.manager._complete(cur, self.job.id, FAILED, error.code, error.body())
        await self.manager.db.write(guarded)
        log.info("job %s %s %s: failed: %s", self.job.id, self.job.cmd, self.job.instance_id, error.text)


JobHandler = Callable[[JobContext], Awaitable[None]]


class JobManager:
    """Accepts, executes, heartbeats and takes over async jobs for one server."""

    def __init__(self, db: Database, server_id: str, address: str, host: HostClient,
                 handlers: dict[str, JobHandler], *, dead_after: float = 3.0,
                 heartbeat_interval: float | None = None, poll_interval: float = 0.2,
                 max_parallel: int = 32, unknown_limit: float = 600.0):
        self.db = db
        self.server_id = server_id
        self.address = address
        self.host = host
        self.handlers = handlers
        self.dead_after = dead_after
        self.heartbeat_interval = heartbeat_interval or max(0.1, dead_after / 4)
        self.poll_interval = poll_interval
        self.max_parallel = max_parallel
        self.unknown_limit = unknown_limit
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self.lease = Lease(self.dead_after, self.heartbeat_interval)
        self._next_housekeeping = 0.0
        self._ended: set[str] = set()
        self._unknown: dict[str, _Unknown] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        started = time.monotonic()
        await self.db.write(self._register, idempotent=True, lease=True)
        self.lease.beat_done(started, time.monotonic())
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                       asyncio.create_task(self._takeover_loop(), name="takeover"),
                       asyncio.create_task(self._dispatch_loop(), name="dispatch")]

    async def stop(self) -> None:
        for t in [*self._tasks, *self.running.values()]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self.running.values(), return_exceptions=True)

    def _register(self, cur: Cursor) -> None:
        cur.execute("INSERT INTO mgmt_server (id, address, heartbeat, started)"
                    " VALUES (%s, %s, NOW(6), NOW(6))"
                    " ON DUPLICATE KEY UPDATE address=VALUES(address), heartbeat=NOW(6), started=NOW(6)",
                    (self.server_id, self.address))

    @property
    def fenced(self) -> bool:
        return self.lease.fenced(time.monotonic())

    # -- accepting -----------------------------------------------------------------
    def submit(self, cur: Cursor, cmd: str, instance_type: str, instance_id: str, params: dict[str, Any],
               account_id: str, user_id: str) -> str:
        """Insert a job owned by this server (inside the caller's transaction)."""
        job_id = str(uuid.uuid4())
        cur.execute("INSERT INTO async_job (id, cmd, instance_type, instance_id, params, account_id, user_id,"
                    " owner) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (job_id, cmd, instance_type, instance_id, json.dumps(params), account_id, user_id,
                     self.server_id))
        return job_id

    def kick(self) -> None:
        self._wake.set()

    # -- heartbeat and takeover ------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            started = time.monotonic()
            self.lease.beat_begun(started)
            try:
                await self.db.write(self._beat, idempotent=True, lease=True)
                self.lease.beat_done(started, time.monotonic())
            except Exception as e:
                self.lease.beat_failed()
                if isinstance(e, DbUnavailable):
                    log.warning("heartbeat failed: %s", e)
                else:
                    log.exception("heartbeat failed")
            await asyncio.sleep(self.heartbeat_interval)

    async def _takeover_loop(self) -> None:
        """Takeover and housekeeping, apart from the heartbeat: their statements lock
        rows of other servers' jobs, and a lock held by a dead server's session
        (power lost mid-transaction: no FIN, the session lingers until the server's
        idle-transaction timeout ends it) made each beat wait for lock timeouts,
        long enough to look dead ourselves."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                if self.lease.may_take_over(time.monotonic()):
                    taken = await self.db.write(self._take_over, idempotent=True, lease=True)
                    if taken:
                        log.warning("took over %d pending job(s) of dead management server(s)", taken)
                        self._wake.set()
                if time.monotonic() >= self._next_housekeeping:
                    await self.db.write(self._housekeeping, idempotent=True, lease=True)
                    self._next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
            except DbUnavailable as e:
                log.warning("takeover of dead servers' jobs failed, trying again: %s", e)
            except Exception:
                log.exception("takeover of dead servers' jobs failed, trying again")

    def _beat(self, cur: Cursor) -> None:
        cur.execute("UPDATE mgmt_server SET heartbeat=NOW(6) WHERE id=%s", (self.server_id,))
        if cur.rowcount == 0:
            self._register(cur)

    def _take_over(self, cur: Cursor) -> int:
        if not self.lease.may_take_over(time.monotonic()):
            return 0  # each try asks again: our own beat may be stuck meanwhile (see Lease)
        cur.execute(
            TAKEOVER_SQL,
            (self.server_id, self.server_id, int(self.dead_after * 1_000_000)))
        return cur.rowcount

    @staticmethod
    def _housekeeping(cur: Cursor) -> None:
        """Old commit markers, expired sessions and old login failures go (any server
        may do it)."""
        cur.execute("DELETE FROM txn_marker WHERE created < NOW(6) - INTERVAL 1 HOUR LIMIT 5000")
        # not there on a schema older than 7 (a server started with --no-migrate): a
        # failed statement does not undo the two above
        with contextlib.suppress(pymysql.err.ProgrammingError):
            cur.execute("DELETE FROM login_failure WHERE last_failure < NOW(6) - INTERVAL 1 DAY"
                        " LIMIT 5000")
        cur.execute("DELETE FROM session WHERE last_used < NOW(6) - INTERVAL 1 DAY"
                    " OR TIMESTAMPDIFF(SECOND, last_used, NOW(6)) > timeout_s LIMIT 5000")

    # -- executing ---------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            if self.fenced or len(self.running) >= self.max_parallel:
                continue
            # A job that ends while we read may still look pending in what we read:
            # remember what ends from now on, so it is not started again.
            self._ended = set()
            try:
                rows = await self.db.read(self._runnable)
            except DbUnavailable as e:
                log.warning("cannot poll jobs: %s", e)
                continue
            except Exception:
                log.exception("cannot poll jobs")
                continue
            for row in rows:
                if row["id"] in self.running or row["id"] in self._ended:
                    continue
                if row["id"] in self._unknown and time.monotonic() < self._unknown[row["id"]].not_before:
                    continue
                if len(self.running) >= self.max_parallel:
                    break
                try:
                    job = Job.from_row(row)
                except Exception as e:  # a row no server can run: it ends, failed, not this loop
                    await self._fail_unreadable(row, e)
                    continue
                task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
                self.running[job.id] = task

    async def _fail_unreadable(self, row: dict[str, Any], error: Exception) -> None:
        """A job row that does not parse (its params not JSON: a hand edit, a newer
        schema) raised out of the dispatch loop and ended it for good, silently, while
        the heartbeat went on: this server's jobs were neither run nor taken over
        (review 35). It is failed instead, under the ownership guard, once."""
        job_id = str(row.get("id"))
        log.error("job %s: cannot read its row (%s: %s); failing it", job_id, type(error).__name__,
                  str(error)[:200])
        self._ended.add(job_id)
        failure = ApiError(INTERNAL_ERROR, f"the job's stored request cannot be read"
                                           f" ({type(error).__name__})")

        def write(cur: Cursor) -> None:
            self._lock_owned(cur, job_id)
            self._complete(cur, job_id, FAILED, failure.code, failure.body())
        try:
            await self.db.write(write, idempotent=True)  # (guarded: a second run is a LostJob)
        except LostJob:
            pass
        except Exception as e:
            log.warning("job %s: could not record its failure: %s", job_id, e)

    def _runnable(self, cur: Cursor) -> list[dict[str, Any]]:
        cur.execute(RUNNABLE_SQL, (self.server_id, self.max_parallel))
        return list(cur.fetchall())

    async def _execute(self, job: Job) -> None:
        ctx = JobContext(self, job)
        pending = False
        try:
            handler = self.handlers.get(job.cmd)
            if handler is None:
                await ctx.fail(ApiError(INTERNAL_ERROR, f"no handler for {job.cmd}"))
            else:
                log.info("job %s %s %s: running%s", job.id, job.cmd, job.instance_id,
                         f" (takeover {job.takeovers})" if job.takeovers else "")
                await handler(ctx)
        except LostJob:
            log.warning("job %s: no longer pending for this server (taken over or finished); dropped",
                        job.id)
        except ApiError as e:
            await self._fail_quietly(ctx, e)
        except HostUnavailable as e:
            if ctx.maybe_applied and self._keep_pending(job, str(e)):
                pending = True
            else:
                await self._fail_quietly(ctx, ApiError(RESOURCE_UNAVAILABLE, self._unknown_text(job, str(e))))
        except DbUnavailable as e:
            pending = True
            log.warning("job %s: database unavailable, will retry: %s", job.id, e)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if ctx.maybe_applied and self._keep_pending(job, f"{type(e).__name__}: {e}"):
                pending = True
            else:
                log.exception("job %s failed", job.id)
                await self._fail_quietly(ctx, ApiError(INTERNAL_ERROR, self._unknown_text(
                    job, "internal error while executing the job")))
        finally:
            if not pending:
                self._unknown.pop(job.id, None)
            self.running.pop(job.id, None)
            self._ended.add(job.id)
            self._wake.set()

    def _keep_pending(self, job: Job, why: str) -> bool:
        """Leave a job whose host effect may have happened pending, to run again
        after a back-off; False once it has been unknown for `unknown_limit`."""
        now = time.monotonic()
        u = self._unknown.setdefault(job.id, _Unknown(since=now))
        if now - u.since > self.unknown_limit:
            return False
        pause = retry_pause(u.tries)
        u.tries += 1
        u.not_before = now + pause
        log.warning("job %s: %s after its host request (the effect may have happened); left pending,"
                    " runs again in %.1f s", job.id, why, pause)
        return True

    def _unknown_text(self, job: Job, text: str) -> str:
        u = self._unknown.get(job.id)
        if u is None:
            return text
        return f"{text}; outcome on the host unknown after {time.monotonic() - u.since:.0f} s of retries"

    async def _fail_quietly(self, ctx: JobContext, error: ApiError) -> None:
        """Fail the job with the handler's repair (a VM left in a transitional state such
        as Expunging refused every later command, for good: review 23)."""
        try:
            await ctx.fail(error, ctx.repair_on_failure() if ctx.repair_on_failure else None)
        except LostJob:
            pass
        except Exception:
            log.exception("job %s: cannot record failure", ctx.job.id)

    # -- guarded writes -------------------------------------------------------------------
    def _lock_owned(self, cur: Cursor, job_id: str) -> None:
        cur.execute(GUARD_SQL, (job_id,))
        row = cur.fetchone()
        if row is None or not may_commit(row["owner"], row["status"], self.server_id):
            raise LostJob(job_id)

    def _complete(self, cur: Cursor, job_id: str, status: int, code: int, result: dict[str, Any]) -> None:
        cur.execute("UPDATE async_job SET status=%s, result_code=%s, result=%s, completed=NOW(6),"
                    " executed_by=%s WHERE id=%s",
                    (status, code, json.dumps(result, default=str), self.server_id, job_id))
