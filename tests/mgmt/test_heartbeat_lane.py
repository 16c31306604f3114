"""The job manager's heartbeat does not wait behind the requests' database work."""

from __future__ import annotations

import asyncio
import time

from tandem.mgmt.db import Database, DbUrl
from tandem.mgmt.jobs import JobManager
from tandem.mgmt.migrations import migrate


def test_the_heartbeat_keeps_its_pace_while_requests_queue_for_the_database(mariadb, database):
    """Review 23: every API request, the heartbeat and the takeover shared one pool of
    8 database threads, first come first served, with no bound on what queues. A flood
    of requests (logins: each a durable write, before any password check; or calls
    waiting on a paused peer's row locks) kept the beat waiting until the server fenced
    itself, and its peers took its jobs over. Here 40 one-second requests queue (five
    rounds of the 8 threads) while the manager runs: the beat must stay fresh."""
    db = Database(DbUrl(host="127.0.0.1", port=mariadb.port, user=mariadb.user, database=database,
                        password=mariadb.password))
    migrate(db)
    jobs = JobManager(db, "s1", "127.0.0.1:1", host=None, handlers={},  # type: ignore[arg-type]
                      dead_after=2.0)

    def slow(cur):
        cur.execute("SELECT SLEEP(1)")
        return cur.fetchall()

    async def scenario() -> tuple[float, int]:
        await jobs.start()
        try:
            await asyncio.sleep(0.6)  # a few beats on a quiet database
            flood = [asyncio.ensure_future(db.read(slow)) for _ in range(40)]
            worst = 0.0
            fenced = 0
            t0 = time.monotonic()
            while not all(f.done() for f in flood) and time.monotonic() - t0 < 30:
                now = time.monotonic()
                worst = max(worst, now - (jobs.lease.last_beat or 0.0))
                fenced += jobs.fenced
                await asyncio.sleep(0.05)
            await asyncio.gather(*flood)
            return worst, fenced
        finally:
            await jobs.stop()

    try:
        worst, fenced = asyncio.run(scenario())
        assert fenced == 0, f"fenced {fenced} times during the flood (the beat {worst:.2f} s old)"
    finally:
        db.close()
