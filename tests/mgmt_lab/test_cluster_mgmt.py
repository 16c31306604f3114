"""The management tier in the lab cluster (real etcd, volume, MariaDB, haproxy,
namespaces): management servers and haproxy cloned on node1 and node2 by the
agents, the API VIP on one node, MariaDB through the DB VIP, the simulated
host on the witness."""

from __future__ import annotations

import os
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


def test_db_switchover_under_api_load_fails_no_request(mstack):
    admin = mstack.admin
    api = Api(mstack.endpoint, admin["apikey"], admin["secretkey"])
    before = mstack.wait_service(60)
    target = "node2" if before == "node1" else "node1"
    holders = mstack.api_vip_holders()
    failures: list[str] = []
    jobs: list[str] = []
    done = Counter()
    stop = threading.Event()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if i % 5 == 0:
                    r = api.raw("deployVirtualMachine", zoneid=ZONE, serviceofferingid=SMALL,
                                templateid=TEMPLATE, name=f"w{worker}-{i}")
                    if r.status_code == 200:
                        jobs.append(r.json()["deployvirtualmachineresponse"]["jobid"])
                else:
                    r = api.raw("listVirtualMachines")
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
                done[worker] += 1
            except requests.RequestException as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        mstack.tandem("witness", "switchover", "--to", target, "--force", timeout=60)
        assert mstack.wait_service(60) == target
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == [], failures[:5]
    assert sum(done.values()) > 30 and jobs
    results = [api.wait_job(j, timeout=90) for j in jobs]
    assert {r["jobstatus"] for r in results} == {1}
    _exactly_once(mstack.effects(), jobs)
    assert mstack.api_vip_holders() == holders  # the API VIP did not move with the database
