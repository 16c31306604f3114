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


def test_every_api_request_gets_a_server_connection_of_its_own(tmp_path, haproxy_bin):
    """A deploy must never ride a pooled server connection: a server SIGKILLed a
    moment before leaves one behind that haproxy has not yet seen close, and a
    deploy is not retried after it was sent (a 502, the flake of the test above).
    A keep-alive HTTP/1.1 server counts the connections haproxy opens to it."""
    import http.server
    conns: dict[str, set[int]] = {"deploy": set(), "list": set()}
    requests_seen = {"deploy": 0, "list": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a connection outlives its request

        def do_GET(self) -> None:
            if "command=deploy" in self.path or "command=list" in self.path:
                kind = "deploy" if "command=deploy" in self.path else "list"
                with lock:
                    conns[kind].add(self.client_address[1])
                    requests_seen[kind] += 1
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    conf = HaproxyConfig(name="api", run_dir=tmp_path, bind_address="127.0.0.1", port=port,
                         check_interval_ms=300,
                         backends=[Backend(name="a", address="127.0.0.1", port=server.server_port)])
    cfg.write_text(render(conf, str(tmp_path / "haproxy.sock")))
    with open(tmp_path / "haproxy.log", "ab") as log:
        proxy = subprocess.Popen([haproxy_bin, "-db", "-f", str(cfg)], stdout=log, stderr=log,
                                 start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/client/api"
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{port}/health"), 10, "haproxy")
        for i in range(20):
            for command in ("deployVirtualMachine", "listVirtualMachines"):
                # a new client connection per request, like the test above
                assert requests.get(url, params={"command": command, "n": i}, timeout=10).ok
        assert requests_seen == {"deploy": 20, "list": 20}
        assert len(conns["deploy"]) == 20, f"20 deploys over {len(conns['deploy'])} server connections"
        assert len(conns["list"]) == 20, f"20 lists over {len(conns['list'])} server connections"
    finally:
        _stop_pid(proxy)
        server.shutdown()
        server.server_close()
