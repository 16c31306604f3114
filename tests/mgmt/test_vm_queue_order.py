"""The jobs of one VM run in the order they committed, one at a time."""

from __future__ import annotations

import threading
import uuid

from tandem.mgmt.auth import Caller
from tandem.mgmt.cmd_vm import queue_vm_job
from tandem.mgmt.db import Database, DbUrl
from tandem.mgmt.jobcore import RUNNABLE_SQL
from tandem.mgmt.jobs import JobManager
from tandem.mgmt.migrations import migrate


def test_a_second_job_on_a_vm_waits_for_the_first_to_commit(mariadb, database):
    """Torture 28: two stops of one VM accepted during a database failover took their
    queue numbers in one order and committed in the other; the server ran the later
    one as the head of the queue and then the other, at the same time. Queueing
    locks the VM row, so the second job is numbered only after the first committed."""
    db = Database(DbUrl(host="127.0.0.1", port=mariadb.port, user=mariadb.user, database=database,
                        password=mariadb.password))
    migrate(db)
    account, vm = str(uuid.uuid4()), str(uuid.uuid4())
    db.write_sync(lambda cur: cur.execute(
        "INSERT INTO vm (id, name, displayname, account_id, zone_id, template_id, service_offering_id,"
        " network_id, state) VALUES (%s, 'v', 'v', %s, 'z', 't', 's', 'n', 'Running')", (vm, account)),
        idempotent=True)
    jobs = JobManager(db, "s1", "127.0.0.1:1", host=None, handlers={})  # type: ignore[arg-type]
    caller = Caller(user_id="u", username="u", account_id=account, account="a", account_type=0,
                    domain_id="d", domain="ROOT")
    first, second = db.connect(), db.connect()
    try:
        first.begin()
        job1 = queue_vm_job(first.cursor(), jobs, caller, vm, "stopVirtualMachine", {"id": vm})
        done = threading.Event()
        got: list[str] = []

        def queue_second() -> None:
            second.begin()
            got.append(queue_vm_job(second.cursor(), jobs, caller, vm, "stopVirtualMachine", {"id": vm}))
            second.commit()
            done.set()

        t = threading.Thread(target=queue_second)
        t.start()
        assert not done.wait(1.0), "the second job was queued while the first was not committed"
        first.commit()
        assert done.wait(10)
        t.join()

        def queue(cur):
            cur.execute("SELECT id FROM async_job WHERE instance_id=%s ORDER BY seq", (vm,))
            order = [r["id"] for r in cur.fetchall()]
            cur.execute(RUNNABLE_SQL, ("s1", 10))
            return order, [r["id"] for r in cur.fetchall()]
        order, runnable = db.read_sync(queue)
        assert order == [job1, got[0]]  # queue order is commit order
        assert runnable == [job1]  # and only the head runs
    finally:
        first.close()
        second.close()
        db.close()
