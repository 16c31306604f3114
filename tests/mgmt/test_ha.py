"""Several management servers on one database: sessions work on every server and
outlive the one that made them; a killed server's jobs are finished by a
survivor exactly once; conflicting operations on one VM are serialized."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.mgmt.conftest import Api, MgmtProc, SimHostProc, create_admin, wait_for

ZONE = "6c2b9a4e-0000-4000-8000-000000000001"
SMALL = "5b7f0c1e-0000-4000-8000-000000000001"
TEMPLATE = "7e4d2a9c-0000-4000-8000-000000000001"


def _deploy(api: Api, name: str) -> tuple[str, str]:
    r = api("deployVirtualMachine", zoneid=ZONE, serviceofferingid=SMALL, templateid=TEMPLATE, name=name)
    return r["id"], r["jobid"]


def _owner_and_survivor(procs, mariadb, database, a_name: str, b_name: str, op_seconds: float,
                        dead_after: float):
    """A simulated host and two servers on one database, with an API client for each."""
    host = SimHostProc(procs, op_seconds=op_seconds)
    a = MgmtProc(procs, mariadb, database, host, a_name, dead_after=dead_after)
    b = MgmtProc(procs, mariadb, database, host, b_name, dead_after=dead_after)
    admin = create_admin(procs, mariadb, database)
    return (host, a, b, Api(a.endpoint, admin["apikey"], admin["secretkey"]),
            Api(b.endpoint, admin["apikey"], admin["secretkey"]))


def _exactly_once(host: SimHostProc) -> list[dict]:
    effects = host.effects()
    assert not [e for e in effects if e.get("conflict")], "two operations ran on one VM at once"
    ids = Counter(e["request_id"] for e in effects)
    assert all(n == 1 for n in ids.values()), f"effects applied twice: {ids}"
    return effects


def test_session_survives_the_server_that_made_it(procs, mariadb, database):
    host = SimHostProc(procs)
    a = MgmtProc(procs, mariadb, database, host, "mgmt-a")
    b = MgmtProc(procs, mariadb, database, host, "mgmt-b")
    admin = create_admin(procs, mariadb, database)
    login = requests.post(a.endpoint, data={"command": "login", "username": "admin",
                                            "password": admin["password"], "response": "json"}, timeout=10)
    key = login.json()["loginresponse"]["sessionkey"]
    params = {"command": "listZones", "response": "json", "sessionkey": key}
    assert requests.get(b.endpoint, params=params, timeout=10).status_code == 200
    a.kill()
    r = requests.get(b.endpoint, params=params, timeout=10)
    assert r.status_code == 200 and r.json()["listzonesresponse"]["count"] == 1
    # the session can also start jobs on the survivor
    r = requests.get(b.endpoint, params={**params, "command": "deployVirtualMachine", "zoneid": ZONE,
                                         "serviceofferingid": SMALL, "templateid": TEMPLATE}, timeout=10)
    assert r.status_code == 200, r.text


def test_killed_server_jobs_finish_exactly_once(procs, mariadb, database):
    host = SimHostProc(procs, op_seconds=1.5)
    servers = [MgmtProc(procs, mariadb, database, host, name, dead_after=1.5) for name in ("ka", "kb", "kc")]
    admin = create_admin(procs, mariadb, database)
    a_api = Api(servers[0].endpoint, admin["apikey"], admin["secretkey"])
    b_api = Api(servers[1].endpoint, admin["apikey"], admin["secretkey"])
    # two running VMs to stop and reboot, made through B
    ready = [_deploy(b_api, f"ready{i}") for i in range(2)]
    for _, job in ready:
        assert b_api.wait_job(job)["jobstatus"] == 1
    # through A: three deploys, a stop and a reboot; A dies while they run
    jobs = [job for _, job in (_deploy(a_api, f"new{i}") for i in range(3))]
    jobs.append(a_api("stopVirtualMachine", id=ready[0][0])["jobid"])
    jobs.append(a_api("rebootVirtualMachine", id=ready[1][0])["jobid"])
    # A polls within 0.2 s and runs them side by side; each takes 1.5 s on the host.
    # Killed once they run (a fixed wait could end before A took any on a loaded machine)
    wait_for(lambda: sum(f"job {j} " in line and ": running" in line
                         for line in procs.log("ka").splitlines() for j in jobs) >= len(jobs),
             10, "A running its jobs")
    time.sleep(0.3)  # their host requests on the way
    servers[0].kill()
    killed_at = time.monotonic()
    assert not {e["request_id"] for e in host.effects()} & set(jobs), "A finished before it was killed"
    results = [b_api.wait_job(job, timeout=30) for job in jobs]
    assert [r["jobstatus"] for r in results] == [1] * 5, results
    assert time.monotonic() - killed_at < 15
    effects = _exactly_once(host)
    by_request = {e["request_id"]: e for e in effects}
    assert all(job in by_request for job in jobs), "a job finished without its effect"
    # the survivors re-sent what A had sent: the host answered from its record, once applied
    stats = host.stats()
    assert stats["replayed"] + stats["joined"] >= 1 and stats["conflicts"] == 0
    assert by_request[jobs[3]]["op"] == "stop" and by_request[jobs[4]]["op"] == "reboot"
    states = {vm: v["state"] for vm, v in host.vms().items()}
    assert states[ready[0][0]] == "Stopped"
    vms = {v["id"]: v["state"] for v in b_api("listVirtualMachines")["virtualmachine"]}
    assert vms == states
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT owner, executed_by, takeovers FROM `{database}`.async_job WHERE id IN"
                    f" ({','.join(['%s'] * len(jobs))})", jobs)
        rows = cur.fetchall()
    # taken over (once, or again if a loaded survivor itself missed a beat) and run by the new owner
    assert all(owner in ("kb", "kc") and by == owner and n >= 1 for owner, by, n in rows), rows


def test_conflicting_operations_on_one_vm_are_serialized(procs, mariadb, database):
    host = SimHostProc(procs, op_seconds=0.15)
    servers = [MgmtProc(procs, mariadb, database, host, name) for name in ("sa", "sb")]
    admin = create_admin(procs, mariadb, database)
    apis = [Api(s.endpoint, admin["apikey"], admin["secretkey"]) for s in servers]
    vm, job = _deploy(apis[0], "busy")
    apis[0].wait_job(job)
    ops = ["stopVirtualMachine", "startVirtualMachine", "rebootVirtualMachine"] * 4

    def fire(i_op: tuple[int, str]) -> str:
        i, op = i_op
        return apis[i % 2](op, id=vm)["jobid"]

    with ThreadPoolExecutor(8) as pool:
        jobids = list(pool.map(fire, enumerate(ops)))
    results = {j: apis[1].wait_job(j, timeout=60) for j in jobids}
    effects = [e for e in _exactly_once(host) if e["vm"] == vm]
    # one at a time: each effect on the VM ends before the next one starts
    for before, after in zip(effects, effects[1:], strict=False):
        assert before["end"] <= after["start"], (before, after)
    # in the order the jobs were accepted, and the final states agree everywhere
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, cmd FROM `{database}`.async_job WHERE instance_id=%s ORDER BY seq", (vm,))
        order = [r[0] for r in cur.fetchall()]
    applied = [e["request_id"] for e in effects]
    assert applied == [j for j in order if j in set(applied)]
    state = host.vms()[vm]["state"]
    assert apis[0]("listVirtualMachines", id=vm)["virtualmachine"][0]["state"] == state
    # replaying the accepted order by hand gives the same outcomes
    expect = "Running"
    for j in order[1:]:
        cmd = next(op for op, jid in zip(ops, jobids, strict=True) if jid == j)
        r = results[j]
        if cmd == "rebootVirtualMachine" and expect != "Running":
            assert r["jobstatus"] == 2 and r["jobresult"]["errorcode"] == 431
            continue
        assert r["jobstatus"] == 1, r
        expect = {"stopVirtualMachine": "Stopped", "startVirtualMachine": "Running"}.get(cmd, expect)
        assert r["jobresult"]["virtualmachine"]["state"] == expect
    assert state == expect


def test_paused_owner_cannot_commit_after_takeover(procs, mariadb, database):
    """SIGSTOP the owner mid-job (it is alive but silent): a survivor takes over and
    finishes; when the owner wakes up it finds the job gone and commits nothing."""
    host, a, b, a_api, b_api = _owner_and_survivor(procs, mariadb, database, "pa", "pb", 1.0, 1.0)
    made = [_deploy(a_api, f"p{i}") for i in range(2)]
    time.sleep(0.4)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        results = [b_api.wait_job(job, timeout=30) for _, job in made]
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    assert [r["jobstatus"] for r in results] == [1, 1]
    wait_for(lambda: "dropped" in procs.log("pa"), 10, "the woken owner to drop its jobs")
    _exactly_once(host)
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT DISTINCT executed_by FROM `{database}`.async_job")
        assert cur.fetchall() == (("pb",),)
    # the woken server is a full member again
    vm = made[0][0]
    assert a_api.wait_job(a_api("stopVirtualMachine", id=vm)["jobid"])["jobstatus"] == 1
    assert host.vms()[vm]["state"] == "Stopped"


def test_a_dead_servers_lingering_transaction_holds_up_takeover_only_briefly(procs, mariadb, database):
    """A server lost power inside a transaction that locked its job's row: no FIN
    reaches MariaDB, so its session lingers with the lock (until TCP keepalive, hours).
    The survivor's takeover waited for that lock at each try, and the heartbeat it
    ran in stalled so long that the survivor looked dead too. Now the server ends a
    session of ours idle in a transaction (IDLE_TRANSACTION_TIMEOUT) and takeover runs
    apart from the heartbeat."""
    from tandem.mgmt.db import IDLE_TRANSACTION_TIMEOUT, Database, DbUrl
    host, a, b, a_api, b_api = _owner_and_survivor(procs, mariadb, database, "za", "zb", 2.0, 1.5)
    _, job = _deploy(a_api, "z1")
    # the session "za" had open when its power went: a transaction holding the job's row
    za_db = Database(DbUrl.parse(mariadb.url(database), password=mariadb.password))
    lingering = za_db.connect()
    try:
        lingering.begin()
        with lingering.cursor() as cur:
            cur.execute("SELECT owner FROM async_job WHERE id=%s FOR UPDATE", (job,))
            assert cur.fetchone()["owner"] == "za"
        a.kill()
        t0 = time.monotonic()
        ages = []
        with mariadb.root_conn() as root, root.cursor() as cur:
            def finished():
                cur.execute(f"SELECT TIMESTAMPDIFF(MICROSECOND, heartbeat, NOW(6)) / 1e6"
                            f" FROM `{database}`.mgmt_server WHERE id='zb'")
                ages.append(float(cur.fetchone()[0]))
                return b_api("queryAsyncJobResult", jobid=job)["jobstatus"] != 0
            wait_for(finished, IDLE_TRANSACTION_TIMEOUT + 25, "the survivor to finish the dead server's job",
                     interval=0.2)
        took = time.monotonic() - t0
    finally:
        with contextlib.suppress(Exception):
            lingering.close()
        za_db.close()
    assert b_api.wait_job(job)["jobstatus"] == 1
    assert took < IDLE_TRANSACTION_TIMEOUT + 15, took
    assert max(ages) < 1.5, f"the survivor's heartbeat stalled for {max(ages):.1f} s"
    _exactly_once(host)


def test_a_host_whose_clock_runs_ahead_fails_the_job_clearly(procs, mariadb, database):
    """Every request reached a host whose clock ran ahead of the lease it carries, and
    was refused as expired: the job retried at once, forever, hammering the host."""
    host = SimHostProc(procs, clock_offset=60.0)
    a = MgmtProc(procs, mariadb, database, host, "ca", dead_after=1.5, host_retry=3.0)
    admin = create_admin(procs, mariadb, database)
    api = Api(a.endpoint, admin["apikey"], admin["secretkey"])
    _, job = _deploy(api, "c1")
    result = api.wait_job(job, timeout=30)
    assert result["jobstatus"] == 2, result
    assert "clock" in procs.log("ca")
    assert host.effects() == []  # nothing was applied
