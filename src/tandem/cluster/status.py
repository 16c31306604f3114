"""`tandem status`: the cluster as crm_mon would show it, from the DCS alone
(so it works from any node, or from the operator's seat).

Read top-down: summary (cluster, leader and epoch, maintenance) -> nodes ->
resources -> management tier clones (with ``[mgmt]``) -> volumes -> last
failover. Healthy output is short; reasons appear only when something is not
as it should be. `--json` has stable field names.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tandem.cluster.decide import peer_is_eligible
from tandem.dcs.keys import decode
from tandem.dcs.view import ClusterView

CLONES = ("mgmt", "haproxy")  #: the management tier's clones, as the agents publish them


async def load_clones(dcs: Any) -> dict[str, Any]:
    """What the agents publish of the management tier: ``clones/<node>`` (each on
    its agent's lease, so a dead node's entry vanishes) and the ``apivip`` key
    (its holder). Only states and reasons: no secrets live there."""
    prefix = dcs.keys.prefix
    rng = await dcs._call("read clones", lambda c: c.get_prefix((prefix + "clones/").encode()))
    got = await dcs._call("read apivip", lambda c: c.get((prefix + "apivip").encode()))
    kvs = [(kv.key.decode(errors="replace"), kv.value) for kv in rng.kvs]
    if got is not None:
        kvs.append((prefix + "apivip", got.value))
    return clones_from_kvs(prefix, kvs)


def clones_from_kvs(prefix: str, kvs: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
    """The clones' part of the cluster's keys (any other key is ignored)."""
    nodes: dict[str, Any] = {}
    holder = None
    for key, value in kvs:
        if key.startswith(prefix + "clones/"):
            data = decode(value)
            if isinstance(data, dict):
                nodes[key[len(prefix + "clones/"):]] = data
        elif key == prefix + "apivip":
            holder = decode(value)
    return {"nodes": nodes, "api_vip_holder": holder.get("node") if isinstance(holder, dict) else None}


def clone_rows(clones: dict[str, Any] | None, cfg_nodes: list[str]) -> dict[str, Any] | None:
    """Per node: each clone's state (running/starting/failed/stopped/unknown) and
    whether it holds the API VIP key."""
    if clones is None:
        return None
    rows = {}
    for n in cfg_nodes:
        pub = clones["nodes"].get(n)
        row: dict[str, Any] = {}
        for c in CLONES:
            entry = (pub or {}).get(c) or {}
            row[c] = {"state": entry.get("state", "unknown"), "detail": entry.get("detail", "")}
            if entry.get("server_id"):
                row[c]["server_id"] = entry["server_id"]
        row["api_vip"] = clones.get("api_vip_holder") == n
        rows[n] = row
    return rows


def status_dict(view: ClusterView, cfg_nodes: list[str], vip: str | None,
                clones: dict[str, Any] | None = None, api_vip: str | None = None) -> dict[str, Any]:
    leader = view.leader
    nodes = []
    for n in cfg_nodes:
        m = view.member(n)
        recorded = {v.resource: (v.disk(n).value if v.disk(n) else None) for v in view.volumes}
        row: dict[str, Any] = {
            "node": n,
            "online": m is not None,
            "role": "Leader" if leader and leader.node == n else (m.role.value if m else "Offline"),
            "disk": m.disk_state.value if m and m.disk_state else None,
            "disk_recorded": recorded,
            "connection": m.connection if m else None,
            "healthy": m.healthy if m else False,
            "standby": view.is_standby(n),
            "nofailover": m.nofailover if m else False,
            "eligible": peer_is_eligible(view, n),
            "sync_percent": m.sync_percent if m else None,
            "last_action": m.note if m else "",
            "failures": m.failures if m else 0,
            "last_failure": m.last_failure if m else "",
            "warnings": list(m.warnings) if m else [],
        }
        if not row["eligible"] and not (leader and leader.node == n):
            why = []
            if m is None:
                why.append("agent not running (no member key)")
            else:
                if not m.healthy:
                    why.append(f"unhealthy after {m.failures} failure(s) in a row" if m.failures > 1
                               else "unhealthy")
                if m.disk_state and m.disk_state.value != "UpToDate":
                    why.append(f"disk is {m.disk_state.value}")
            why += [f"DCS records {w}" for w in view.not_up_to_date(n)]
            if view.is_standby(n):
                why.append("in standby")
            row["not_promotable_because"] = why
        nodes.append(row)
    last = view.last_failover
    return {
        "cluster": view.cluster,
        "leader": {"node": leader.node, "epoch": leader.epoch} if leader else None,
        "epoch": view.epoch,
        "maintenance": view.maintenance,
        "switchover": ({"from": view.switchover.leader, "to": view.switchover.candidate}
                       if view.switchover else None),
        "nodes": nodes,
        "resources": {"db": {"running_on": leader.node if leader else None,
                             "vip": vip}},
        "mgmt": (None if clones is None else
                 {"api_vip": api_vip, "api_vip_on": clones.get("api_vip_holder"),
                  "nodes": clone_rows(clones, cfg_nodes)}),
        "volumes": [{"resource": v.resource, "disks": {n: s.value for n, s in v.disks}}
                    for v in view.volumes],
        "last_failover": ({"epoch": last.epoch, "node": last.node, "reason": last.reason,
                           "at": last.at} if last else None),
    }


def render(st: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    lead = st["leader"]
    head = (f"Cluster [bold]{st['cluster']}[/bold]: leader "
            + (f"[bold]{lead['node']}[/bold] (epoch {lead['epoch']})" if lead else "[red]none[/red]"))
    if st["maintenance"]:
        head += "  [yellow]MAINTENANCE: the agents leave resources alone[/yellow]"
    if st["switchover"]:
        head += f"  switchover requested -> {st['switchover']['to'] or 'any'}"
    console.print(head)
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("node", "role", "disk (reported)", "disk (DCS)", "replication", "health"):
        table.add_column(col, justify="left")
    for n in st["nodes"]:
        rec = ", ".join(f"{s}" for s in n["disk_recorded"].values() if s) or "-"
        health = "ok" if n["healthy"] else ("offline" if not n["online"] else "unhealthy")
        if n["standby"]:
            health += ", standby"
        repl = n["connection"] or "-"
        if n["sync_percent"] is not None:
            repl += f" {n['sync_percent']:.1f}%"
        table.add_row(*(escape(str(c)) for c in (n["node"], n["role"], n["disk"] or "-", rec, repl,
                                                 health)))
    console.print(table)
    db = st["resources"]["db"]
    where = db["running_on"] or "[red]stopped[/red]"
    vip = f", db-vip {db['vip']}" if db["vip"] else ""
    console.print(f"Resources: db group (volume, filesystem, mariadb{vip}) on {where}")
    mgmt = st.get("mgmt")
    if mgmt:
        on = mgmt["api_vip_on"] or "[red]no node[/red]"
        console.print(f"Management tier: api-vip {mgmt['api_vip'] or '-'} on {on}")
        ct = Table(box=None, pad_edge=False, show_edge=False)
        for col in ("node", *CLONES, "api-vip"):
            ct.add_column(col, justify="left")
        for node, row in mgmt["nodes"].items():
            cells = []
            for c in CLONES:
                state = row[c]["state"]
                color = {"running": "green", "starting": "yellow"}.get(state, "red")
                text = f"[{color}]{escape(str(state))}[/{color}]"
                if row[c].get("server_id"):
                    text += f" {escape(str(row[c]['server_id']))}"
                if state not in ("running", "starting") and row[c]["detail"]:
                    text += f" ({escape(str(row[c]['detail'])[:80])})"
                cells.append(text)
            ct.add_row(node, *cells, "holds" if row["api_vip"] else "")
        console.print(ct)
    for n in st["nodes"]:
        if n.get("not_promotable_because"):
            console.print(f"  {n['node']} cannot be promoted:"
                          f" {escape(', '.join(n['not_promotable_because']))}")
        for w in n.get("warnings") or []:
            console.print(f"  [yellow]{n['node']} warning: {escape(str(w))}[/yellow]")
        if n.get("failures") and n.get("last_failure"):
            console.print(f"  {n['node']} failed {n['failures']} time(s) in a row, last:"
                          f" {escape(str(n['last_failure']))}")
    last = st["last_failover"]
    if last:
        ago = time.time() - last["at"]
        console.print(f"Last leader change: epoch {last['epoch']} -> {last['node']}, {ago:.0f} s ago"
                      f" ({escape(str(last['reason']))})")
