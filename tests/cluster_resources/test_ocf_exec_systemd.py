"""ocf (a tiny agent in this directory), exec, and systemd's error path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tandem.cluster.resources import build, parse_resource
from tandem.cluster.resources.systemd import SYSTEMD_RUNTIME
from tests.cluster_resources.conftest import must, op

OCF_ROOT = Path(__file__).parent / "ocf"


def test_ocf_agent_in_a_lab_host(lab, resources):
    state = lab.host_dir("node2") / "run" / "dummy.state"
    cfg = {"name": "dummy", "provider": "tandem", "agent": "dummy", "ocf_root": str(OCF_ROOT),
           "params": {"state": str(state)}, "start_timeout": 7}
    assert op(lab, "node2", "ocf", "monitor", cfg)["state"] == "stopped"
    assert "ocf:tandem:dummy started" in resources.start("node2", "ocf", cfg)["message"]
    assert state.read_text() == "dummy timeout=7000\n"  # OCF environment passed
    assert must(lab, "node2", "ocf", "monitor", cfg)["message"] == "dummy monitor: exit 0 (success)"
    must(lab, "node2", "ocf", "stop", cfg)
    assert op(lab, "node2", "ocf", "monitor", cfg)["state"] == "stopped"

    bad = op(lab, "node2", "ocf", "start", {**cfg, "name": "bad", "params": {}})
    assert not bad["ok"] and "exit 6 (not configured)" in bad["message"], bad
    missing = op(lab, "node2", "ocf", "start", {**cfg, "name": "gone", "agent": "nosuch"})
    assert not missing["ok"] and "missing or not executable" in missing["message"]


def test_exec_in_a_lab_host(lab, resources):
    flag = lab.host_dir("node2") / "run" / "exec.flag"
    cfg = {"name": "flag", "start": f"touch {flag}", "stop": ["rm", "-f", str(flag)],
           "monitor": f"test -e {flag} || exit 7"}
    assert op(lab, "node2", "exec", "monitor", cfg)["state"] == "stopped"
    resources.start("node2", "exec", cfg)
    assert must(lab, "node2", "exec", "monitor", cfg)["ok"] and flag.exists()
    broken = op(lab, "node2", "exec", "monitor", {**cfg, "monitor": "echo disk on fire; exit 3"})
    assert broken["state"] == "failed" and broken["message"] == "monitor command exited 3: disk on fire"


@pytest.mark.skipif(SYSTEMD_RUNTIME.is_dir(), reason="systemd runs here: the error path does not apply")
def test_systemd_without_systemd_says_so():
    res = build(parse_resource({"kind": "systemd", "name": "cron", "unit": "cron.service"}))

    async def go():
        return await res.start(), await res.monitor(), await res.stop()

    start, health, stop = asyncio.run(go())
    for text in (start.sentence, health.reason, stop.sentence):
        assert text == ("systemd is not running on this node (/run/systemd/system is missing):"
                        " cannot manage unit cron.service")
    assert not start.ok and not stop.ok and health.state == "failed"
