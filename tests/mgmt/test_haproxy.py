"""Two management servers behind a real haproxy on loopback: a session made
through the single address keeps working while one server is SIGKILLed under
load; read requests never fail; new jobs are accepted and old ones finished."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest
import requests

from tandem.cluster.resources.config import Backend, HaproxyConfig
from tandem.cluster.resources.haproxy import render
from tests.mgmt.conftest import MgmtProc, SimHostProc, _http_ok, _stop_pid, create_admin, free_port, wait_for

ZONE = "6c2b9a4e-0000-4000-8000-000000000001"
SMALL = "5b7f0c1e-0000-4000-8000-000000000001"
TEMPLATE = "7e4d2a9c-0000-4000-8000-000000000001"


@pytest.fixture
def haproxy_bin() -> str:
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not shutil.which(path):
        pytest.fail("haproxy is not installed: run scripts/setup")
    return path


def test_killing_one_server_behind_haproxy(procs, mariadb, database, haproxy_bin):
    host = SimHostProc(procs, op_seconds=0.8)
    a = MgmtProc(procs, mariadb, database, host, "ha-a", dead_after=1.5)
    b = MgmtProc(procs, mariadb, database, host, "ha-b", dead_after=1.5)
    admin = create_admin(procs, mariadb, database)
    port = free_port()
    cfg = procs.root / "haproxy.cfg"
    backends = [Backend(name=n, address="127.0.0.1", port=s.port) for n, s in (("a", a), ("b", b))]
    conf = HaproxyConfig(name="api", run_dir=procs.root, bind_address="127.0.0.1", port=port,
                         check_interval_ms=300, backends=backends)
    cfg.write_text(render(conf, str(procs.root / "haproxy.sock")))
    check = subprocess.run([haproxy_bin, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with open(procs.root / "haproxy.log", "ab") as log:
        proxy = subprocess.Popen([haproxy_bin, "-db", "-f", str(cfg)], stdout=log, stderr=log,
                                 start_new_session=True)
    try:
        vip = f"http://127.0.0.1:{port}/client/api"
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{port}/health"), 10, "haproxy")
        s = requests.Session()
        r = s.post(vip, data={"command": "login", "username": "admin", "password": admin["password"],
                              "response": "json"}, timeout=10)
        key = r.json()["loginresponse"]["sessionkey"]
        failures: list[str] = []
        stop = threading.Event()

        def read_load() -> None:
            while not stop.is_set():
                try:
                    resp = requests.get(vip, params={"command": "listVirtualMachines", "response": "json",
                                                     "sessionkey": key}, timeout=10)
                    if resp.status_code != 200:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")
                except requests.RequestException as e:
                    failures.append(repr(e))

        def deploy() -> str:
            resp = requests.get(vip, params={"command": "deployVirtualMachine", "response": "json",
                                             "sessionkey": key, "zoneid": ZONE, "serviceofferingid": SMALL,
                                             "templateid": TEMPLATE}, timeout=10)
            assert resp.status_code == 200, resp.text
            return resp.json()["deployvirtualmachineresponse"]["jobid"]

        threads = [threading.Thread(target=read_load) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            jobs = [deploy() for _ in range(4)]  # round robin: some on each server
            time.sleep(0.3)
            a.kill()
            jobs += [deploy() for _ in range(4)]  # right after the kill, before health checks notice
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert failures == []

        def done() -> bool:
            states = []
            for job in jobs:
                resp = requests.get(vip, params={"command": "queryAsyncJobResult", "response": "json",
                                                 "sessionkey": key, "jobid": job}, timeout=10)
                states.append(resp.json()["queryasyncjobresultresponse"]["jobstatus"])
            return all(st == 1 for st in states)

        wait_for(done, 30, "all jobs to succeed", 0.3)
        effects = [e["request_id"] for e in host.effects()]
        assert sorted(effects) == sorted(jobs)
    finally:
        _stop_pid(proxy)
