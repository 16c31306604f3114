"""The rules of job ownership and takeover, with no I/O (used by jobs.py and tandem.sim).

`jobs.JobManager` runs these rules against MariaDB (the SQL below is what it
executes); the deterministic simulation (`tandem.sim.jobworld`) runs the Python
predicates next to each statement against a model database. Each predicate and
its statement must say the same thing: change both or neither.

- `Lease`: a server's own view of its heartbeat (fenced / may take over).
- `may_commit`: the guard of every job write (the row is locked FOR UPDATE first).
- `owner_dead`: whose pending jobs a takeover moves (heartbeat on the DB clock).
- `runnable`: a job runs only as the oldest pending job of its object.
- `Lease.may_send` / `requests_valid_until`: the fence on host requests (a paused
  owner's late request is refused by the host, or never sent).
- `MARK_SENT_SQL` / `may_fail_unreached`: a job records that its host request
  may leave before it leaves; a job whose request may have reached the host is
  never failed for want of an answer, it runs again after `retry_pause`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PENDING, SUCCEEDED, FAILED = 0, 1, 2

GUARD_SQL = "SELECT owner, status FROM async_job WHERE id=%s FOR UPDATE"
TAKEOVER_SQL = (
    "UPDATE async_job j LEFT JOIN mgmt_server s ON s.id = j.owner"
    " SET j.owner=%s, j.takeovers=j.takeovers+1"
    " WHERE j.status=0 AND j.owner <> %s"
    " AND (s.id IS NULL OR s.heartbeat < NOW(6) - INTERVAL %s MICROSECOND)")
MARK_SENT_SQL = "UPDATE async_job SET host_sent=1 WHERE id=%s"
RETRY_BACKOFF = (0.5, 10.0)  #: first and longest pause before a job whose outcome is unknown runs again
RUNNABLE_SQL = (
    "SELECT j.* FROM async_job j WHERE j.owner=%s AND j.status=0 AND NOT EXISTS"
    " (SELECT 1 FROM async_job k WHERE k.instance_id=j.instance_id AND k.status=0 AND k.seq < j.seq)"
    " ORDER BY j.seq LIMIT %s")


@dataclass
class Lease:
    """Our side of the heartbeat lease, sans-IO: the caller passes monotonic times.

    Two judgements: `fenced` — our last beat is so old that others may already
    presume us dead, so start no new job; `may_take_over` — we have beaten
    steadily for a whole `dead_after`, so a stale heartbeat of another server
    means that server, not the database, stopped. After any slow or failed beat
    (a database outage makes *every* heartbeat stale) the clock restarts.
    """

    dead_after: float
    interval: float
    last_beat: float | None = None
    steady_since: float | None = None
    beat_started: float | None = None  #: when the last successful beat was sent
    stretch_since: float | None = None  #: start of the current unbroken run of valid beats
    beat_in_flight_since: float | None = None  #: when the beat under way (if any) began

    def beat_done(self, started: float, finished: float) -> None:
        self.beat_in_flight_since = None
        if self.steady_since is None or finished - started > self.interval:
            self.steady_since = finished
        until = self.requests_valid_until()
        if until is None or finished > until:
            # A moment without validity: someone may have taken our jobs over since.
            self.stretch_since = finished
        self.last_beat = finished
        self.beat_started = started

    def requests_valid_until(self) -> float | None:
        """Until when the host may act on a request we send now (None: never).

        Counted from when the last beat was *sent* (the database stamped it no
        earlier), so it ends a quarter of `dead_after` before anyone may presume
        us dead; the clocks of servers and host must agree better than that."""
        return None if self.beat_started is None else self.beat_started + self.dead_after * 0.75

    def may_send(self, now: float, confirmed_at: float | None) -> bool:
        """A host request for a job may go out now: our lease is valid and has been
        without a gap since `confirmed_at`, when a guarded write last proved the job
        ours. A paused server resumes with a gap, so it must prove ownership again
        (and learns that the job was taken over) before touching the host."""
        until = self.requests_valid_until()
        return (until is not None and now < until and confirmed_at is not None
                and self.stretch_since is not None and confirmed_at >= self.stretch_since)

    def beat_begun(self, now: float) -> None:
        self.beat_in_flight_since = now

    def beat_failed(self) -> None:
        self.steady_since = None
        self.beat_in_flight_since = None

    def may_take_over(self, now: float) -> bool:
        """Also false while a beat has been under way longer than the interval: the
        database may be failing over, and once back every other server's heartbeat
        looks stale (takeover runs apart from the beat, and retries)."""
        stuck = self.beat_in_flight_since is not None and now - self.beat_in_flight_since > self.interval
        return self.steady_since is not None and now - self.steady_since >= self.dead_after and not stuck

    def fenced(self, now: float) -> bool:
        return self.last_beat is None or now - self.last_beat > self.dead_after * 0.75


def may_commit(owner: str | None, status: int | None, me: str) -> bool:
    """GUARD_SQL's check: the job row exists, we own it, and it is still pending."""
    return owner == me and status == PENDING


def owner_dead(heartbeat: float | None, now: float, dead_after: float) -> bool:
    """TAKEOVER_SQL's condition on the owner (None: no mgmt_server row)."""
    return heartbeat is None or heartbeat < now - dead_after


def takes_over(owner: str, status: int, me: str, heartbeat: float | None, now: float,
               dead_after: float) -> bool:
    """TAKEOVER_SQL's WHERE clause for one job row."""
    return status == PENDING and owner != me and owner_dead(heartbeat, now, dead_after)


@dataclass(frozen=True)
class QueuedJob:
    seq: int
    instance_id: str
    owner: str
    status: int


def runnable(jobs: Iterable[QueuedJob], me: str, limit: int) -> list[QueuedJob]:
    """RUNNABLE_SQL: our pending jobs that are the oldest pending job of their object."""
    pending = [j for j in jobs if j.status == PENDING]
    oldest: dict[str, int] = {}
    for j in pending:
        if j.seq < oldest.get(j.instance_id, j.seq + 1):
            oldest[j.instance_id] = j.seq
    mine = sorted((j for j in pending if j.owner == me and oldest[j.instance_id] == j.seq),
                  key=lambda j: j.seq)
    return mine[:limit]


def may_fail_unreached(sent_before: bool, maybe_delivered: bool) -> bool:
    """May a job whose host did not answer be reported failed? Only when no
    request of it can have reached the host: none left in an earlier run (by
    this server or an earlier owner: `host_sent` was 0 when this run read the
    job) and every attempt of this run was refused before the host could act."""
    return not sent_before and not maybe_delivered


def retry_pause(tries: int) -> float:
    """The pause before run `tries + 1` of a job whose host outcome is unknown."""
    first, longest = RETRY_BACKOFF
    return min(longest, first * 2 ** tries)
