"""vip: the address moves from node1 to node2, the client reaches it at once
(gratuitous ARP updates its neighbour entry to node2's MAC), and only one host
holds it at any time."""

from __future__ import annotations

import json
import time

from tandem.cluster.resources.vip import holders
from tests.cluster_resources.conftest import must, op


def mac(lab, host: str) -> str:
    return json.loads(lab.run(host, ["ip", "-j", "link", "show", "pub0"]).stdout)[0]["address"]


def client_neighbour(lab, addr: str) -> str | None:
    entries = json.loads(lab.run("client", ["ip", "-j", "neigh", "show", addr]).stdout or "[]")
    return entries[0].get("lladdr") if entries else None


def ping(lab, addr: str) -> bool:
    return lab.run("client", ["ping", "-c", "1", "-W", "1", addr], check=False).returncode == 0


def test_vip_moves_between_nodes(lab, resources):
    addr = str(lab.spec.vip(1))
    cfg = {"name": "dbvip", "address": f"{addr}/24", "interface": "pub0"}
    assert holders(lab, addr) == []
    assert op(lab, "node1", "vip", "monitor", cfg)["state"] == "stopped"

    resources.start("node1", "vip", cfg)
    assert must(lab, "node1", "vip", "monitor", cfg)["message"] == f"{addr} is on pub0"
    assert ping(lab, addr)
    assert client_neighbour(lab, addr) == mac(lab, "node1")
    assert holders(lab, addr) == ["node1"]

    # Move: stop on node1, start on node2; the client's cached entry (node1's MAC,
    # fresh from the ping) must be replaced by the gratuitous ARP, not by a timeout.
    assert "removed" in must(lab, "node1", "vip", "stop", cfg)["message"]
    assert holders(lab, addr) == []
    resources.start("node2", "vip", cfg)
    assert holders(lab, addr) == ["node2"]
    assert ping(lab, addr)
    assert client_neighbour(lab, addr) == mac(lab, "node2")
    assert op(lab, "node1", "vip", "monitor", cfg)["state"] == "stopped"
    assert "was not on pub0" in must(lab, "node1", "vip", "stop", cfg)["message"]  # idempotent


def test_vip_on_a_link_without_carrier_fails_monitor(lab, healed, resources):
    addr = str(lab.spec.vip(2))
    cfg = {"name": "apivip", "address": f"{addr}/24"}
    resources.start("node1", "vip", cfg)
    lab.faults.unplug("node1")  # links down, the address stays configured
    try:
        mon = op(lab, "node1", "vip", "monitor", cfg)
        assert mon["state"] == "failed" and "no carrier" in mon["message"], mon
    finally:
        lab.faults.plug("node1")
        must(lab, "node1", "vip", "stop", cfg)


def test_old_holder_stops_announcing_when_the_vip_moves(lab, resources):
    """A late gratuitous ARP from the old holder would pull the client back to it."""
    addr = str(lab.spec.vip(3))
    cfg = {"name": "movevip", "address": f"{addr}/24", "arp_count": 3,
           "run_dir": str(lab.host_dir("node1") / "run")}
    resources.start("node1", "vip", cfg)
    assert ping(lab, addr)
    must(lab, "node1", "vip", "stop", cfg)  # its arping would go on for 2 more seconds
    cfg2 = {**cfg, "arp_count": 1, "run_dir": str(lab.host_dir("node2") / "run")}
    resources.start("node2", "vip", cfg2)
    assert ping(lab, addr)
    time.sleep(2.3)
    assert client_neighbour(lab, addr) == mac(lab, "node2")
    assert ping(lab, addr)
