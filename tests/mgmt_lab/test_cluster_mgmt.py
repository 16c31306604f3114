"""The management tier in the lab cluster (real etcd, volume, MariaDB, haproxy,
namespaces): management servers and haproxy cloned on node1 and node2 by the
agents, the API VIP on one node, MariaDB through the DB VIP, the simulated
host on the witness."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import requests
from cs import CloudStack
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState, Provider

from tests.mgmt.conftest import Api

ZONE = "6c2b9a4e-0000-4000-8000-000000000001"
SMALL = "5b7f0c1e-0000-4000-8000-000000000001"
TEMPLATE = "7e4d2a9c-0000-4000-8000-000000000001"


def test_clients_drive_a_vm_lifecycle_through_the_api_vip(mstack):
    admin = mstack.admin
    assert mstack.api_vip_holders() in (["node1"], ["node2"])
    api = CloudStack(endpoint=mstack.endpoint, key=admin["apikey"], secret=admin["secretkey"],
                     poll_interval=0.1, job_timeout=60)
    zone = api.listZones()["zone"][0]
    offering = api.listServiceOfferings()["serviceoffering"][0]
    template = api.listTemplates(templatefilter="featured")["template"][0]
    vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=offering["id"],
                                  templateid=template["id"], name="cs1", fetch_result=True)["virtualmachine"]
    assert vm["state"] == "Running"
    assert api.stopVirtualMachine(id=vm["id"], fetch_result=True)["virtualmachine"]["state"] == "Stopped"
    assert api.startVirtualMachine(id=vm["id"], fetch_result=True)["virtualmachine"]["state"] == "Running"
    assert api.rebootVirtualMachine(id=vm["id"], fetch_result=True)["virtualmachine"]["state"] == "Running"
    api.destroyVirtualMachine(id=vm["id"], expunge=True, fetch_result=True)
    assert vm["id"] not in [v["id"] for v in api.listVirtualMachines(fetch_list=True)]

    url = urlsplit(mstack.endpoint)
    driver = get_driver(Provider.CLOUDSTACK)(key=admin["apikey"], secret=admin["secretkey"],
                                             host=url.hostname, port=url.port, path=url.path, secure=False)
    driver.connection.poll_interval = 0.1
    locations, sizes, images = driver.list_locations(), driver.list_sizes(), driver.list_images()
    assert locations and sizes and images
    node = driver.create_node(name="lc1", size=sizes[0], image=images[0], location=locations[0],
                              ex_start_vm=True)
    assert node.state == NodeState.RUNNING
    assert node.id in [n.id for n in driver.list_nodes()]
    assert driver.reboot_node(node)
    assert driver.ex_stop(node) == "Stopped"
    assert driver.ex_start(node) == "Running"
    assert driver.destroy_node(node, ex_expunge=True)
    assert node.id not in [n.id for n in driver.list_nodes()]

    ops = {v: [e["op"] for e in mstack.effects() if e.get("vm") == v] for v in (vm["id"], node.id)}
    assert ops[vm["id"]] == ["create", "stop", "start", "reboot", "destroy"]
    assert ops[node.id] == ["create", "reboot", "stop", "start", "destroy"]


def _kill_server(mstack, node: str) -> dict:
    """SIGKILL the management server the agent runs on `node`, by its recorded pid."""
    st = mstack.mgmt_state(node)
    cmdline = Path(f"/proc/{st['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"mgmt" in cmdline and b"serve" in cmdline, cmdline
    os.kill(st["pid"], signal.SIGKILL)
    return st


def _exactly_once(effects: list[dict], request_ids) -> None:
    assert not [e for e in effects if e.get("conflict")], "two operations ran on one VM at once"
    counts = Counter(e["request_id"] for e in effects)
    assert all(n == 1 for n in counts.values()), f"effects applied twice: {counts}"
    missing = set(request_ids) - set(counts)
    assert not missing, f"jobs finished without their effect: {missing}"


def test_session_from_one_node_survives_its_server(mstack):
    login = requests.post(mstack.server_endpoint("node1"), data={
        "command": "login", "username": "admin", "password": mstack.admin["password"], "response": "json"},
        timeout=10)
    assert login.status_code == 200, login.text
    key = login.json()["loginresponse"]["sessionkey"]
    params = {"command": "listZones", "response": "json", "sessionkey": key}
    assert requests.get(mstack.server_endpoint("node2"), params=params, timeout=10).status_code == 200
    victim = _kill_server(mstack, "node1")
    # at once, before any health check noticed: haproxy redispatches to the survivor
    for _ in range(20):
        r = requests.get(mstack.endpoint, params=params, timeout=10)
        assert r.status_code == 200 and r.json()["listzonesresponse"]["count"] >= 1, r.text
    assert requests.get(mstack.server_endpoint("node2"), params=params, timeout=10).status_code == 200
    # the agent restarts its clone as a new incarnation; the session works there too
    def restarted() -> bool:
        st = mstack.mgmt_state("node1")
        if st.get("server_id") in (None, victim["server_id"]):
            return False
        try:
            return requests.get(mstack.server_endpoint("node1"), params=params, timeout=5).status_code == 200
        except requests.RequestException:
            return False
    mstack.wait(restarted, 60, "the restarted management server on node1")


def test_jobs_of_a_killed_server_are_finished_once_by_a_survivor(mstack):
    admin = mstack.admin
    on_node1 = Api(mstack.server_endpoint("node1"), admin["apikey"], admin["secretkey"])
    via_vip = Api(mstack.endpoint, admin["apikey"], admin["secretkey"])
    ready = via_vip("deployVirtualMachine", zoneid=ZONE, serviceofferingid=SMALL, templateid=TEMPLATE,
                    name="ready")
    assert via_vip.wait_job(ready["jobid"])["jobstatus"] == 1
    def submit(i: int) -> str:
        if i == 3:
            return on_node1("stopVirtualMachine", id=ready["id"])["jobid"]
        return on_node1("deployVirtualMachine", zoneid=ZONE, serviceofferingid=SMALL, templateid=TEMPLATE,
                        name=f"k{i}")["jobid"]

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:  # all four accepted at about the same time
        jobs = list(pool.map(submit, range(4)))
    accepted = time.monotonic() - t0
    time.sleep(0.3)  # the owner picks them up within 0.2 s; each host operation takes 1.5 s
    victim = _kill_server(mstack, "node1")
    killed_at = time.monotonic()
    early = [e for e in mstack.effects() if e["request_id"] in jobs]
    # On a loaded machine an operation may end before the kill; it must still count once.
    assert len(early) <= 1, f"{len(early)} of 4 finished before the kill (accepting took {accepted:.2f} s," \
                            f" killed at {killed_at:.2f}): {early}"
    in_flight = set(jobs) - {e["request_id"] for e in early}
    results = [via_vip.wait_job(j, timeout=60) for j in jobs]
    assert [r["jobstatus"] for r in results] == [1] * len(jobs), results
    _exactly_once(mstack.effects(), jobs)
    rows = mstack.query_cloud("SELECT id, executed_by FROM async_job WHERE id IN (%s, %s, %s, %s)", *jobs)
    assert len(rows) == 4 and all(by and by != victim["server_id"] for j, by in rows if j in in_flight), rows
    states = {v["id"]: v["state"] for v in via_vip("listVirtualMachines")["virtualmachine"]}
    assert states[ready["id"]] == "Stopped"


class ApiLoad:
    """Clients calling through the API VIP (4 of 5 calls list VMs, 1 deploys), each
    request recorded with its command, HTTP status (0: no answer) and wait."""

    def __init__(self, mstack, workers: int = 3, sessionkey: str | None = None):
        admin = mstack.admin
        self.api = Api(mstack.endpoint, admin["apikey"], admin["secretkey"])
        self.endpoint, self.sessionkey = mstack.endpoint, sessionkey
        self.records: list[dict] = []
        self.jobs: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(workers)]
        self.tag = secrets.token_hex(3)  # VM names are unique per account: one tag per load

    def _call(self, cmd: str, **params: str) -> requests.Response:
        if self.sessionkey:  # a login session instead of signed requests
            return requests.get(self.endpoint, params={"command": cmd, "response": "json",
                                                       "sessionkey": self.sessionkey, **params}, timeout=30)
        return self.api.raw(cmd, **params)

    def _run(self, worker: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            cmd = "deployVirtualMachine" if i % 5 == 0 else "listVirtualMachines"
            t0 = time.monotonic()
            try:
                if cmd == "deployVirtualMachine":
                    r = self._call(cmd, zoneid=ZONE, serviceofferingid=SMALL, templateid=TEMPLATE,
                                   name=f"w{self.tag}-{worker}-{i}")
                else:
                    r = self._call(cmd, page="1", pagesize="20")
                status, text = r.status_code, r.text[:200]
                if status == 200 and cmd == "deployVirtualMachine":
                    self.jobs.append(r.json()["deployvirtualmachineresponse"]["jobid"])
            except requests.RequestException as e:
                status, text = 0, repr(e)[:200]
            self.records.append({"cmd": cmd, "status": status, "wait": time.monotonic() - t0,
                                 "at": t0, "text": text})
            time.sleep(0.02)

    def __enter__(self) -> ApiLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def failures(self, since: float = 0.0) -> list[dict]:
        return [r for r in self.records if r["status"] != 200 and r["at"] >= since]

    def check_jobs(self, mstack) -> None:
        """Every job a client got an id for finishes successfully, its effect applied once."""
        results = [self.api.wait_job(j, timeout=120) for j in self.jobs]
        assert {r["jobstatus"] for r in results} <= {1}, results
        _exactly_once(mstack.effects(), self.jobs)


def _db_on(mstack, node: str) -> None:
    """Move the database to `node` (if it is not there) and wait until it serves.

    A node back from a crash resyncs first; and its first promotion after the
    crash may fail at the filesystem (mkfs refuses its loop device as "in use":
    a volume/filesystem bug outside this package, seen on a loaded machine), after
    which the agents fall back and the node is eligible again 10 s later. This
    helper only sets the stage for the API VIP test, so it tries again then."""
    def eligible() -> bool:
        return next(n for n in mstack.status()["nodes"] if n["node"] == node)["eligible"]

    for _attempt in (1, 2, 3):
        if mstack.wait_service(90) == node:
            return
        mstack.wait(eligible, 180, f"{node} to be eligible")
        proc = mstack.tandem("witness", "switchover", "--to", node, "--force", timeout=60, check=False)
        if proc.returncode == 0 and mstack.wait_service(90) == node:
            return
    raise AssertionError(f"could not move the database to {node}: {(proc.stderr or proc.stdout).strip()}")


def test_status_shows_the_clones_and_the_api_vip_holder(mstack):
    [holder] = mstack.api_vip_holders()
    def shown():
        st = mstack.status()["mgmt"]
        ok = all(st["nodes"][n]["mgmt"]["state"] == "running" and st["nodes"][n]["haproxy"]["state"]
                 == "running" for n in ("node1", "node2"))
        return st if ok and st["api_vip_on"] == holder else None
    st = mstack.wait(shown, 30, "status to show both nodes' clones running")
    assert st["api_vip"] == mstack.api_vip
    assert [n for n, row in st["nodes"].items() if row["api_vip"]] == [holder]
    assert st["nodes"]["node1"]["mgmt"]["server_id"].startswith("node1-")
    text = mstack.tandem("witness", "status").stdout
    assert f"api-vip {mstack.api_vip} on {holder}" in text and "running" in text
    assert mstack.admin["secretkey"] not in text + json.dumps(st)


def test_db_switchover_under_api_load_fails_no_request(mstack):
    before = mstack.wait_service(60)
    target = "node2" if before == "node1" else "node1"
    holders = mstack.api_vip_holders()
    with ApiLoad(mstack) as load:
        time.sleep(2.0)
        mstack.tandem("witness", "switchover", "--to", target, "--force", timeout=60)
        assert mstack.wait_service(60) == target
        time.sleep(2.0)
    assert load.failures() == [], load.failures()[:5]
    assert len(load.records) > 30 and load.jobs
    load.check_jobs(mstack)
    assert mstack.api_vip_holders() == holders  # the API VIP did not move with the database


def test_hard_db_failover_under_api_load_fails_only_past_the_bound(mstack):
    """The DB primary is crashed (the API VIP is on the other node, so the fault is
    the database's). Requests wait for the database; only one that waited longer
    than the servers' retry budget may fail. A deploy in flight on the crashed
    node's own management server dies with it (its answer is lost, haproxy does
    not repeat a write): such a request may fail, but its job, if it was
    created, is then finished once by a survivor, never twice."""
    [holder] = mstack.api_vip_holders()
    victim = "node2" if holder == "node1" else "node1"
    _db_on(mstack, victim)
    before = int(mstack.query_cloud("SELECT COALESCE(MAX(seq), 0) FROM async_job")[0][0])
    with ApiLoad(mstack) as load:
        time.sleep(2.0)
        crashed_at = time.monotonic()
        mstack.lab.faults.crash(victim)
        crash_done = time.monotonic()  # killing the host's processes takes a moment
        assert mstack.wait_service(90) == holder
        time.sleep(2.0)
    bound = mstack.db_retry
    early = [r for r in load.failures() if r["wait"] < bound]
    died_with_server = [r for r in early if r["cmd"] == "deployVirtualMachine" and r["status"] in (0, 502)
                        and r["at"] <= crash_done]
    assert [r for r in early if r not in died_with_server] == [], early[:5]
    assert all(r["status"] == 200 for r in load.records if r["cmd"] == "listVirtualMachines"
               and r["wait"] < bound), [r for r in load.records if r["status"] != 200][:5]
    assert len([r for r in load.records if r["at"] > crashed_at]) > 10
    load.check_jobs(mstack)
    rows = mstack.query_cloud("SELECT id, status FROM async_job WHERE seq > %s", str(before))
    counts = Counter(e["request_id"] for e in mstack.effects())
    assert all(counts[j] <= 1 for j, _ in rows), "a job applied twice"
    assert all(st == 1 and counts[j] == 1 for j, st in rows), rows  # unanswered ones finished too
    assert mstack.api_vip_holders() == [holder]
    mstack.restart_host(victim)
    mstack.wait_api(120)


def test_crash_of_the_api_vip_holder_moves_the_vip_and_sessions_go_on(mstack):
    [holder] = mstack.api_vip_holders()
    other = "node2" if holder == "node1" else "node1"
    _db_on(mstack, other)  # this test is about the API VIP: keep the database out of it
    login = requests.post(mstack.endpoint, data={"command": "login", "username": "admin", "password":
                                                 mstack.admin["password"], "response": "json"}, timeout=10)
    assert login.status_code == 200, login.text
    key = login.json()["loginresponse"]["sessionkey"]
    with ApiLoad(mstack, workers=2, sessionkey=key) as load:
        time.sleep(1.0)
        crashed_at = time.monotonic()
        mstack.lab.faults.crash(holder)
        mstack.wait(lambda: mstack.api_vip_holders() == [other], 30, f"the API VIP on {other}")
        moved_at = time.monotonic()
        mstack.wait(lambda: len([r for r in load.records if r["at"] > moved_at + 1.0]) >= 10, 60,
                    "10 requests after the move")
    # only requests in flight at the crash or sent while the VIP moved may fail
    assert all(r["at"] + r["wait"] >= crashed_at for r in load.failures()), load.failures()[:5]
    after = [r for r in load.records if r["at"] > moved_at + 1.0]
    assert len(after) >= 10 and all(r["status"] == 200 for r in after), load.failures(moved_at + 1.0)[:5]
    r = requests.get(mstack.endpoint, params={"command": "listZones", "response": "json", "sessionkey": key},
                     timeout=10)
    assert r.status_code == 200 and r.json()["listzonesresponse"]["count"] >= 1
    st = mstack.status()["mgmt"]
    assert st["api_vip_on"] == other and st["nodes"][holder]["mgmt"]["state"] == "unknown"
    load.check_jobs(mstack)
    mstack.restart_host(holder)
    mstack.wait_api(120)
