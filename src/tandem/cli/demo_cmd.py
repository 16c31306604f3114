"""`tandem demo`: the README's main job.

Brings up a lab cluster (etcd on node1/node2/witness, the replicated volume,
an agent per data node running volume -> ext4 -> MariaDB -> DB VIP), runs a
writer through the DB VIP from the client host, crashes the primary, and shows
the failover as a timeline on the lab's shared monotonic clock, then the proof:
every acknowledged write is in the database, and no two nodes were ever
writable at once. Tears everything down afterwards (unless --keep).
"""

from __future__ import annotations

import os
import time

import typer
from rich.console import Console
from rich.table import Table

from tandem.errors import LabError
from tandem.lab.checker import (
    acks_outside_writable,
    lost_writes,
    overlapping_writers,
    serving_node,
    write_gap,
    writes_resumed,
)
from tandem.lab.lab import Lab
from tandem.lab.shell import run
from tandem.lab.writer import read_log

console = Console()


def _timeline(events: list[dict], acks: list[dict], t_fault: float, new: str) -> Table:
    rows: list[tuple[float, str]] = [(0.0, "fault: primary crashed (SIGKILL of every process, links down)")]
    after = [e for e in events if e["t"] >= t_fault]
    acquired = next((e for e in after if e["kind"] == "leader_acquired" and e["node"] == new), None)
    if acquired:
        rows.append((acquired["t"] - t_fault, f"detection: old leader key expired; {new} took it"
                                              f" (epoch {acquired['epoch']})"))
    start = next((e for e in after if e["kind"] == "promote_start" and e["node"] == new), None)
    writable = next((e for e in after if e["kind"] == "writable" and e["node"] == new and e["writable"]),
                    None)
    if writable:
        rows.append((writable["t"] - t_fault, f"promotion: volume Primary on {new}"))
    if start:
        t = start["t"]
        names = {"filesystem": "mount: ext4 on loop on the volume", "mariadb": "MariaDB ready",
                 "db-vip": "VIP moved (address added, gratuitous ARP)"}
        for e in after:
            if e["kind"] == "resource" and e["node"] == new and e["t"] >= start["t"]:
                t += e["seconds"]
                if e["resource"] in names:
                    rows.append((t - t_fault, names[e["resource"]]))
                if e["resource"] == "db-vip":
                    break
    resumed = writes_resumed(acks, t_fault)
    if resumed is not None:
        rows.append((resumed - t_fault, "writes acknowledged again (end of the longest gap)"))
    table = Table(title="failover timeline (CLOCK_MONOTONIC, seconds after the crash)", box=None)
    table.add_column("t+s", justify="left")
    table.add_column("event", justify="left")
    for t, what in sorted(rows):
        table.add_row(f"{t:6.3f}", what)
    return table


def demo(lab: str = typer.Option(None, "--lab", "-l", help="lab name (default: demo)"),
         keep: bool = typer.Option(False, help="leave the lab up afterwards"),
         write_seconds: float = typer.Option(5.0, help="writes before the crash")) -> None:
    """Lab cluster + writer, crash the primary, show the failover and the proof."""
    from tandem.lab.stack import LabStack
    if os.geteuid() != 0:
        raise LabError("the demo builds a lab of network namespaces: run it as root")
    name = lab or os.environ.get("TANDEM_LAB") or "demo"
    Lab.down_by_name(name)
    the_lab = Lab.up(name)
    ok = False
    try:
        stack = LabStack(the_lab)
        console.print(f"[bold]1. cluster[/bold] lab {name}: etcd x3 (leader on the witness), volume db"
                      " node1<->node2, agents on node1 and node2")
        t0 = time.monotonic()
        stack.start()
        console.print(f"   up in {time.monotonic() - t0:.1f} s")
        console.print(stack.tandem("witness", "status").stdout)
        old = stack.leader()
        assert old is not None
        new = next(n for n in ("node1", "node2") if n != old)
        console.print(f"[bold]2. workload[/bold] writer on client -> DB VIP {stack.vip}:3306,"
                      " one autocommit INSERT per unique id")
        out = stack.start_writer()
        time.sleep(write_seconds)
        n_before = len(read_log(str(out))[0])
        console.print(f"   {n_before} writes acknowledged so far")
        console.print(f"[bold]3. fault[/bold] crashing the primary {old}")
        t_fault = time.clock_gettime(time.CLOCK_MONOTONIC)
        the_lab.faults.crash(old)
        stack.wait(lambda: stack.leader() == new and stack.db_ping(), 60, f"{new} to serve")
        time.sleep(2.0)
        the_lab.stop("client", "writer")
        acks, errors = read_log(str(out))
        console.print(_timeline(the_lab.events.read(), acks, t_fault, new))
        gap = write_gap(acks, t_fault)
        console.print(f"   write unavailability (longest time without an ack around the crash):"
                      f" {gap:.3f} s" if gap is not None else "   no write after the crash!")
        console.print(stack.tandem("witness", "status").stdout)
        console.print("[bold]4. proof[/bold]")
        stored = {r[0] for r in stack.query("SELECT id FROM tandem.acked")}
        lost = lost_writes(acks, stored)
        events = the_lab.events.read()
        overlaps = overlapping_writers(events)
        outside = acks_outside_writable(acks, events)
        console.print(f"   acknowledged writes: {len(acks)}; found in the database after failover:"
                      f" {len(acks) - len(lost)}; lost: {len(lost)}")
        console.print(f"   failed attempts during failover (never acknowledged, so not owed): {len(errors)}")
        console.print(f"   intervals with two writable nodes: {len(overlaps)}")
        console.print(f"   acks committed by a node outside its writable intervals: {len(outside)}"
                      f" (of {sum(serving_node(a.get('by', '')) is not None for a in acks)} that"
                      " name their node)")
        ok = not lost and not overlaps and not outside and gap is not None
        console.print("[bold green]   PASS: nothing acknowledged was lost[/bold green]" if ok else
                      "[bold red]   FAIL[/bold red]")
    finally:
        if not keep:
            Lab.down_by_name(name)
    if not keep:
        from tandem.lab.lab import lab_root, loops_backed_under, mounts_under
        left = [ns for ns in run(["ip", "netns", "list"]).stdout.split() if ns.startswith(f"{name}-")]
        left += mounts_under(lab_root() / name) + loops_backed_under(lab_root() / name)
        console.print(f"lab {name} down: " + ("nothing left behind (namespaces, mounts, loop devices)"
                                                if not left else f"WARNING: left behind: {left}"))
    if not ok:
        raise typer.Exit(1)
