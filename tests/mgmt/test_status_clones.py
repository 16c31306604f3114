"""`tandem status` shows the management tier from what the agents publish:
each node's clones (running, failed, or unknown when the node's key is gone)
and the API VIP holder, in the table and in --json (pure: no cluster needed)."""

from __future__ import annotations

import json

from rich.console import Console

from tandem.cluster.status import render, status_dict
from tandem.dcs.view import ClusterView

PUBLISHED = {
    "nodes": {
        "node1": {"mgmt": {"state": "running", "server_id": "node1-3"}, "haproxy": {"state": "running"},
                  "api_vip": True},
        "node2": {"mgmt": {"state": "failed", "detail": "management server pid 42 is gone: boom"},
                  "haproxy": {"state": "running"}, "api_vip": False},
    },
    "api_vip_holder": "node1",
}


def test_clones_and_api_vip_in_json_and_table():
    st = status_dict(ClusterView.empty("c"), ["node1", "node2", "node3"], "10.0.0.100",
                     clones=PUBLISHED, api_vip="10.0.0.101")
    mgmt = json.loads(json.dumps(st))["mgmt"]
    assert mgmt["api_vip"] == "10.0.0.101" and mgmt["api_vip_on"] == "node1"
    assert mgmt["nodes"]["node1"] == {"mgmt": {"state": "running", "detail": "", "server_id": "node1-3"},
                                      "haproxy": {"state": "running", "detail": ""}, "api_vip": True}
    assert mgmt["nodes"]["node2"]["mgmt"]["state"] == "failed"
    assert mgmt["nodes"]["node3"]["mgmt"]["state"] == "unknown"  # no key: the node is gone
    console = Console(record=True, width=160)
    render(st, console)
    text = console.export_text()
    assert "Management tier: api-vip 10.0.0.101 on node1" in text
    row1 = next(line for line in text.splitlines() if line.startswith("node1 ") and "node1-3" in line)
    assert "running" in row1 and "holds" in row1
    row2 = next(line for line in text.splitlines() if line.startswith("node2 ") and "failed" in line)
    assert "pid 42 is gone" in row2 and "holds" not in row2


def test_no_mgmt_section_without_the_tier():
    st = status_dict(ClusterView.empty("c"), ["node1"], None)
    assert st["mgmt"] is None
    console = Console(record=True, width=160)
    render(st, console)
    assert "Management tier" not in console.export_text()
