"""The takeover pass reads the pending jobs, not every job the cluster ever ran."""

from __future__ import annotations

import uuid

from tandem.mgmt.db import Database, DbUrl
from tandem.mgmt.jobcore import TAKEOVER_SQL
from tandem.mgmt.migrations import migrate


def test_the_takeover_pass_examines_only_pending_jobs(mariadb, database):
    """Review 23: each server runs TAKEOVER_SQL every 0.75 s, finished jobs are kept,
    and no index began with the status: the pass read the whole table, a cost that
    grows for the life of the cluster. 3,000 finished jobs and 3 pending ones: the
    plan must not visit the finished ones."""
    db = Database(DbUrl(host="127.0.0.1", port=mariadb.port, user=mariadb.user, database=database,
                        password=mariadb.password))
    try:
        migrate(db)

        def fill(cur):
            rows = [(str(uuid.uuid4()), "deployVirtualMachine", "VirtualMachine", str(uuid.uuid4()), "{}",
                     "a", "u", f"s{i % 3}", 1 if i >= 3 else 0) for i in range(3003)]
            cur.executemany("INSERT INTO async_job (id, cmd, instance_type, instance_id, params, account_id,"
                            " user_id, owner, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
            cur.execute("ANALYZE TABLE async_job")
            cur.fetchall()
        db.write_sync(fill, idempotent=False)

        def plan(cur):
            cur.execute("EXPLAIN " + TAKEOVER_SQL, ("me", "me", 3_000_000))
            return cur.fetchall()
        rows = db.read_sync(plan)
        job = next(r for r in rows if r["table"] == "j")
        assert job["key"] == "job_pending", rows
        assert int(job["rows"]) < 100, rows
    finally:
        db.close()
