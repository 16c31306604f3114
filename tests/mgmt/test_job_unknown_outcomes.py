"""A job whose host request may have reached the host must not be reported
failed because something failed after it: the host's effect may (here: does)
stand. It stays pending and runs again; the host replays the first result.

Torture 52/53 found two jobs "reported failed but applied on the host": the
Primary's disk failed, the job's final guarded commit got MariaDB error 1024
("Error reading file") after the host had stopped/started the VM, and the job
was marked failed. Here a trigger makes the real MariaDB answer the final state
change with the errors a failing disk produces, counted down in a MyISAM table
(a non-transactional table keeps the count across the rollback).
"""

from __future__ import annotations

import os
import signal
import time

from tests.mgmt.conftest import Api, MgmtProc, SimHostProc, create_admin, wait_for
from tests.mgmt.test_ha import _deploy, _exactly_once

FAILING_FINAL_STATE = """
CREATE TRIGGER fail_final_state BEFORE UPDATE ON vm FOR EACH ROW BEGIN
  DECLARE left_ INT DEFAULT 0;
  DECLARE errno_ INT DEFAULT 0;
  IF NEW.state = 'Stopped' THEN
    SELECT remaining, errno INTO left_, errno_ FROM fail_plan LIMIT 1;
    IF left_ > 0 THEN
      UPDATE fail_plan SET remaining = remaining - 1;
      SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = errno_, MESSAGE_TEXT = 'simulated storage error';
    END IF;
  END IF;
END
"""


def _plan_failures(mariadb, database: str, errno: int, times: int) -> None:
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"USE `{database}`")
        cur.execute("CREATE TABLE IF NOT EXISTS fail_plan (errno INT NOT NULL, remaining INT NOT NULL)"
                    " ENGINE=MyISAM")
        cur.execute("DELETE FROM fail_plan")
        cur.execute("INSERT INTO fail_plan VALUES (%s, %s)", (errno, times))
        cur.execute("DROP TRIGGER IF EXISTS fail_final_state")
        cur.execute(FAILING_FINAL_STATE)


def _remaining(mariadb, database: str) -> int:
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT remaining FROM `{database}`.fail_plan")
        return cur.fetchone()[0]


def _status(api: Api, job: str) -> int:
    return api("queryAsyncJobResult", jobid=job)["jobstatus"]


def _running_vm(procs, mariadb, database, host, **server) -> tuple[Api, str, MgmtProc]:
    mgmt = MgmtProc(procs, mariadb, database, host, "se", **server)
    admin = create_admin(procs, mariadb, database)
    api = Api(mgmt.endpoint, admin["apikey"], admin["secretkey"])
    vm, job = _deploy(api, "victim")
    assert api.wait_job(job)["jobstatus"] == 1
    return api, vm, mgmt


def test_a_disk_error_under_the_final_commit_is_repeated_not_reported(procs, mariadb, database):
    """Three 1024 "Error reading file" answers, then the disk is fine again."""
    host = SimHostProc(procs)
    api, vm, _ = _running_vm(procs, mariadb, database, host)
    _plan_failures(mariadb, database, 1024, 3)
    result = api.wait_job(api("stopVirtualMachine", id=vm)["jobid"], timeout=30)
    assert result["jobstatus"] == 1, result
    assert result["jobresult"]["virtualmachine"]["state"] == "Stopped"
    assert _remaining(mariadb, database) == 0, "the error was never returned: the test proves nothing"
    assert host.vms()[vm]["state"] == "Stopped"
    _exactly_once(host)


def test_a_job_whose_database_keeps_failing_after_the_host_acted_stays_pending(procs, mariadb, database):
    """An error no retry layer knows (1036, "table is read only": ext4 remounted
    read-only) keeps coming after the host stopped the VM: the job stays pending,
    runs again with back-off, and succeeds once the database is healthy -- with the
    host's effect applied once."""
    host = SimHostProc(procs)
    api, vm, mgmt = _running_vm(procs, mariadb, database, host, db_retry=1.0)
    _plan_failures(mariadb, database, 1036, 10_000)
    job = api("stopVirtualMachine", id=vm)["jobid"]
    wait_for(lambda: host.vms()[vm]["state"] == "Stopped", 20, "the host to stop the VM")
    wait_for(lambda: _remaining(mariadb, database) < 10_000, 10, "the job to fail its final commit")
    time.sleep(2.0)  # several runs and back-offs
    assert api("queryAsyncJobResult", jobid=job)["jobstatus"] == 0, "reported while its outcome is unknown"
    assert "left pending" in procs.log("se")
    tries = 10_000 - _remaining(mariadb, database)
    assert 2 <= tries <= 10, f"{tries} runs in about 2 s: no back-off, or no retry"
    _plan_failures(mariadb, database, 1036, 0)
    result = api.wait_job(job, timeout=40)
    assert result["jobstatus"] == 1, result
    assert result["jobresult"]["virtualmachine"]["state"] == "Stopped"
    effects = _exactly_once(host)
    assert [e["op"] for e in effects if e["request_id"] == job] == ["stop"]
    assert host.stats()["replayed"] >= 1, "later runs must be answered from the host's record"
    assert mgmt.proc.poll() is None


def test_a_host_that_stops_answering_mid_request_leaves_the_job_pending_not_failed(procs, mariadb, database):
    """The host takes the stop request and freezes (SIGSTOP) for longer than the
    server's host retry budget; when it wakes it finishes the stop. The job must
    not have been reported failed (with the VM in Error) meanwhile: it waits, asks
    again under the same request id, and succeeds with the host's first result."""
    host = SimHostProc(procs, op_seconds=1.0)
    api, vm, _ = _running_vm(procs, mariadb, database, host, host_retry=2.0)
    job = api("stopVirtualMachine", id=vm)["jobid"]
    wait_for(lambda: f"job {job} stopVirtualMachine" in procs.log("se"), 10, "the job to start")
    time.sleep(0.4)  # its request is on the host, which works 1 s on it
    os.kill(host.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: "left pending" in procs.log("se") or _status(api, job) != 0, 45,
                 "the host request to time out")
        assert _status(api, job) == 0, "reported while its outcome is unknown"
    finally:
        os.kill(host.proc.pid, signal.SIGCONT)
    result = api.wait_job(job, timeout=40)
    assert result["jobstatus"] == 1, result
    assert result["jobresult"]["virtualmachine"]["state"] == "Stopped"
    assert [e["op"] for e in _exactly_once(host) if e["request_id"] == job] == ["stop"]


def test_a_host_that_refuses_connections_fails_the_job_at_once(procs, mariadb, database):
    """The other side of the rule: a request that never reached the host (the
    host is gone: connection refused) fails the job within the budget, VM Error."""
    host = SimHostProc(procs, op_seconds=0.2)
    api, vm, _ = _running_vm(procs, mariadb, database, host, host_retry=2.0)
    host.proc.kill()
    host.proc.wait(10)
    result = api.wait_job(api("stopVirtualMachine", id=vm)["jobid"], timeout=30)
    assert result["jobstatus"] == 2, result
    assert "unavailable" in result["jobresult"]["errortext"]
    assert "left pending" not in procs.log("se")


def test_a_restarted_server_does_not_fail_a_job_whose_earlier_run_reached_the_host(procs, mariadb, database):
    """The server dies while the host works on its stop request (the host finishes
    it), and comes back under the same id while the host is down (connection
    refused: this run's requests provably never arrive). The job row says its
    request left in an earlier run, so the job waits for the host instead of
    failing; when the host is back it replays the first result."""
    host = SimHostProc(procs, op_seconds=1.0)
    api, vm, mgmt = _running_vm(procs, mariadb, database, host, host_retry=1.0)
    job = api("stopVirtualMachine", id=vm)["jobid"]
    wait_for(lambda: f"job {job} stopVirtualMachine" in procs.log("se"), 10, "the job to start")
    time.sleep(0.4)
    mgmt.kill()
    wait_for(lambda: any(e["request_id"] == job for e in host.effects()), 10, "the host to finish the stop")
    host.proc.kill()
    host.proc.wait(10)
    again = MgmtProc(procs, mariadb, database, host, "se", host_retry=1.0)
    api.endpoint = again.endpoint
    wait_for(lambda: "left pending" in procs.log("se") or _status(api, job) != 0, 20, "the job to run again")
    time.sleep(1.5)  # more runs, each refused by the dead host
    assert _status(api, job) == 0, "failed although its request reached the host in an earlier run"
    host = SimHostProc(procs, op_seconds=1.0, port=host.port)  # back, with its state
    result = api.wait_job(job, timeout=40)
    assert result["jobstatus"] == 1, result
    assert result["jobresult"]["virtualmachine"]["state"] == "Stopped"
    assert [e["op"] for e in _exactly_once(host) if e["request_id"] == job] == ["stop"]
    assert host.stats()["replayed"] >= 1


FAILING_MARK_SENT = """
CREATE TRIGGER fail_mark_sent BEFORE UPDATE ON async_job FOR EACH ROW BEGIN
  IF NEW.host_sent <> OLD.host_sent THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'simulated failure before the host request';
  END IF;
END
"""


def _vm_state(api: Api, vm: str) -> str:
    return api("listVirtualMachines", id=vm)["virtualmachine"][0]["state"]


def test_a_job_that_fails_after_its_transitional_state_leaves_the_vm_usable(procs, mariadb, database):
    """Review 23: a stop (or expunge) commits its transitional state (Stopping,
    Expunging), then fails on a path that repaired nothing (here the write that marks
    the host request as sent fails with an error that is not worth repeating): the VM
    stayed Stopping, and an Expunging one refused every later command, for good. The
    host never saw this request, so the VM is what it was; the next stop works."""
    host = SimHostProc(procs)
    api, vm, _ = _running_vm(procs, mariadb, database, host)
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"USE `{database}`")
        cur.execute(FAILING_MARK_SENT)
    try:
        result = api.wait_job(api("stopVirtualMachine", id=vm)["jobid"], timeout=30)
        assert result["jobstatus"] == 2, result
        assert _vm_state(api, vm) == "Running", "left in its transitional state"
    finally:
        with mariadb.root_conn() as conn, conn.cursor() as cur:
            cur.execute(f"DROP TRIGGER IF EXISTS `{database}`.fail_mark_sent")
    result = api.wait_job(api("stopVirtualMachine", id=vm)["jobid"], timeout=30)
    assert result["jobstatus"] == 1, result
    assert _vm_state(api, vm) == "Stopped" and host.vms()[vm]["state"] == "Stopped"
    _exactly_once(host)
