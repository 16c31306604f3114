"""The simulated host: idempotent by request id (also while the first request
runs), strict about conflicting operations, durable state, an effect log."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.mgmt.conftest import SimHostProc


def _op(host: SimHostProc, rid: str, op: str, vm: str, **spec) -> requests.Response:
    return requests.post(host.url + "/v1/ops", json={"request_id": rid, "op": op, "vm": vm, "spec": spec},
                         timeout=10)


def test_request_ids_make_operations_idempotent(procs):
    host = SimHostProc(procs, op_seconds=0.3)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _op(host, "r1", "create", "vm1").json(), range(4)))
    assert all(a["ok"] and a["state"] == "Running" for a in answers)
    assert sum(1 for a in answers if not a.get("replayed")) == 1
    assert host.stats()["joined"] == 3
    assert _op(host, "r2", "stop", "vm1").json()["state"] == "Stopped"
    again = _op(host, "r1", "create", "vm1").json()
    assert again["replayed"] and again["state"] == "Running"  # the first answer, not today's state
    refused = _op(host, "r3", "reboot", "vm1")
    assert refused.status_code == 409 and "not Running" in refused.json()["error"]
    assert [(e["request_id"], e["op"]) for e in host.effects()] == [("r1", "create"), ("r2", "stop")]
    state = json.loads((host.dir / "state.json").read_text())
    assert state["vms"]["vm1"]["state"] == "Stopped" and "r3" in state["requests"]


def test_concurrent_different_operations_on_one_vm_are_refused(procs):
    host = SimHostProc(procs, op_seconds=0.5)
    assert _op(host, "c", "create", "vm1").status_code == 200
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda rid: _op(host, rid, "reboot", "vm1"), ["x", "y"])
    assert sorted([a.status_code, b.status_code]) == [200, 409]
    assert [e for e in host.effects() if e.get("conflict")]
    bad = requests.post(host.url + "/v1/ops", data="nope", timeout=5)
    assert bad.status_code == 400


def test_an_expired_request_is_refused_unless_already_known(procs):
    """A request whose sender's job lease ran out (a server paused mid-job) must
    not act: another server may have taken the job over and failed it meanwhile.
    A request id the host already knows still replays (that is no new effect)."""
    import time
    host = SimHostProc(procs, op_seconds=0.05)
    body = {"request_id": "j1", "op": "create", "vm": "vm1", "spec": {}}
    late = requests.post(host.url + "/v1/ops", json={**body, "expires": time.time() - 1}, timeout=10)
    assert late.status_code == 409 and late.json()["expired"], late.text
    assert host.effects() == []
    ok = requests.post(host.url + "/v1/ops", json={**body, "expires": time.time() + 30}, timeout=10)
    assert ok.status_code == 200 and ok.json()["ok"]
    again = requests.post(host.url + "/v1/ops", json={**body, "expires": time.time() - 1}, timeout=10)
    assert again.json()["replayed"]
    assert [e["request_id"] for e in host.effects()] == ["j1"]
    bad = requests.post(host.url + "/v1/ops", json={**body, "request_id": "j2", "expires": "x"}, timeout=10)
    assert bad.status_code == 400


def test_an_effect_the_crash_kept_out_of_the_log_is_written_at_the_next_start(tmp_path):
    """Torture 74/76: the host was power-cut after it had saved an applied stop in its
    state and before the effect line: the job was answered (a replay) after the
    restart, and the log never had it ("reported done but never applied"). The next
    start writes the missing line; a line the crash cut in half is dropped."""
    from tandem.mgmt.simhost import SimHost
    state = {"vms": {"vm1": {"state": "Stopped", "spec": {}, "boots": 1}},
             "requests": {"r1": {"ok": True, "state": "Running", "request_id": "r1", "op": "create",
                                 "vm": "vm1", "start": 1.0, "end": 1.5},
                          "r2": {"ok": True, "state": "Stopped", "request_id": "r2", "op": "stop",
                                 "vm": "vm1", "start": 2.0, "end": 2.5},
                          "r3": {"ok": False, "error": "refused", "request_id": "r3", "op": "reboot",
                                 "vm": "vm1"}}}
    (tmp_path / "state.json").write_text(json.dumps(state))
    (tmp_path / "effects.jsonl").write_text(
        json.dumps({"request_id": "r1", "op": "create", "vm": "vm1", "start": 1.0, "end": 1.5,
                    "state": "Running"}) + "\n" + '{"request_id": "r2", "op": "st')
    SimHost(tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "effects.jsonl").read_text().splitlines()]
    assert [(e["request_id"], e.get("recovered", False)) for e in lines] == [("r1", False), ("r2", True)]
    assert lines[1]["op"] == "stop" and lines[1]["state"] == "Stopped"
    SimHost(tmp_path)  # nothing twice
    assert len((tmp_path / "effects.jsonl").read_text().splitlines()) == 2
