"""haproxy on node1 in front of two trivial HTTP servers (node1, node2):
round robin over both, no failed request when one dies (retries +
redispatch), health checks take it out of rotation, and a reload hands over to
a new process."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from tandem.lab.supervisor import pid_alive
from tests.cluster_resources.conftest import must, op

BACKEND_PORT = 8081
PROXY_PORT = 8080

CLIENT_SCRIPT = """
import json, sys, urllib.request
seen = {}
for _ in range(int(sys.argv[2])):
    try:
        who = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip()
    except Exception as e:
        who = "error: " + type(e).__name__
    seen[who] = seen.get(who, 0) + 1
print(json.dumps(seen))
"""


def fetch_many(lab, url: str, n: int) -> dict[str, int]:
    return json.loads(lab.run("client", [sys.executable, "-c", CLIENT_SCRIPT, url, str(n)]).stdout)


@pytest.fixture
def web(lab):
    """`python -m http.server` on node1 and node2, each answering /who with its name."""
    for host in ("node1", "node2"):
        root = lab.host_dir(host) / "data" / "www"
        root.mkdir(parents=True, exist_ok=True)
        (root / "who").write_text(host + "\n")
        (root / "health").write_text("ok\n")
        lab.spawn(host, "web", [sys.executable, "-m", "http.server", str(BACKEND_PORT),
                                "--bind", lab.address(host), "--directory", str(root)])
    try:
        yield
    finally:
        for host in ("node1", "node2"):
            lab.stop(host, "web")


def test_balances_and_drops_a_dead_backend(lab, web, resources):
    d = lab.host_dir("node1")
    cfg = {"name": "api", "run_dir": str(d / "run"), "port": PROXY_PORT, "check_interval_ms": 200,
           "backends": [{"name": h, "address": lab.address(h), "port": BACKEND_PORT}
                        for h in ("node1", "node2")]}
    started = resources.start("node1", "haproxy", cfg)
    pid = int(started["message"].split()[2])
    url = f"http://{lab.address('node1')}:{PROXY_PORT}/who"
    deadline = time.monotonic() + 10
    while "2/2 servers up" not in (mon := op(lab, "node1", "haproxy", "monitor", cfg))["message"]:
        assert time.monotonic() < deadline, mon
    assert fetch_many(lab, url, 10) == {"node1": 5, "node2": 5}

    lab.stop("node2", "web")
    # At once (before any health check noticed): retried on node1, no errors.
    assert fetch_many(lab, url, 10) == {"node1": 10}
    deadline = time.monotonic() + 5
    while "down: node2" not in (mon := op(lab, "node1", "haproxy", "monitor", cfg))["message"]:
        assert time.monotonic() < deadline, mon
    assert mon["ok"] and "1/2 servers up" in mon["message"]
    assert fetch_many(lab, url, 6) == {"node1": 6}

    # Reload: a new process takes over, the old one leaves.
    reloaded = must(lab, "node1", "haproxy", "reload", cfg)
    new_pid = int(reloaded["message"].split("pid ")[1].split()[0])
    assert new_pid != pid
    deadline = time.monotonic() + 5
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"old haproxy {pid} still running"
        time.sleep(0.05)
    assert fetch_many(lab, url, 4) == {"node1": 4}
    assert "haproxy.cfg" in os.listdir(d / "run" / "api")
