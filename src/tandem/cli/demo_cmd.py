"""`tandem demo`: the README's main job.

Today it brings a lab up, shows its hosts and what a fault does to them, and
tears everything down again; as the volume and the agent land it grows into the
failover demonstration (workload, crash of the primary, timeline, proof).
"""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table

from tandem.errors import LabError
from tandem.lab.lab import Lab
from tandem.lab.shell import run

console = Console()


def _reach(lab: Lab, src: str, dst: str, net: str) -> str:
    proc = lab.run(src, ["ping", "-c", "1", "-W", "1", lab.address(dst, net)], check=False)
    return "ok" if proc.returncode == 0 else "cut"


def _matrix(lab: Lab, net: str) -> Table:
    hosts = [h.name for h in lab.spec.hosts if net in h.networks]
    table = Table(title=f"{net} network reachability", box=None)
    table.add_column("from \\ to")
    for h in hosts:
        table.add_column(h)
    for src in hosts:
        table.add_row(src, *["-" if src == dst else _reach(lab, src, dst, net) for dst in hosts])
    return table


def demo(lab: str = typer.Option(None, "--lab", "-l", help="lab name (default: demo)"),
         keep: bool = typer.Option(False, help="leave the lab up afterwards")) -> None:
    """Bring up a lab cluster, show it and a fault, and tear it down."""
    if os.geteuid() != 0:
        raise LabError("the demo builds a lab of network namespaces: run it as root")
    name = lab or os.environ.get("TANDEM_LAB") or "demo"
    before = run(["ip", "netns", "list"]).stdout
    Lab.down_by_name(name)
    the_lab = Lab.up(name)
    try:
        from tandem.cli.lab_cmd import _print_status
        _print_status(the_lab.status())
        console.print(_matrix(the_lab, "replication"))
        console.print("\n[bold]fault:[/bold] cutting the replication link node1 <-> node2")
        the_lab.faults.partition(["node1"], ["node2"], net="replication")
        console.print(_matrix(the_lab, "replication"))
        the_lab.faults.heal()
        console.print("[bold]healed[/bold]")
        console.print(_matrix(the_lab, "replication"))
        console.print("\nevent log (CLOCK_MONOTONIC):")
        for ev in the_lab.events.iter():
            extra = {k: v for k, v in ev.items() if k not in ("t", "wall", "kind")}
            console.print(f"  {ev['t']:.6f}  {ev['kind']:<8} {extra}")
    finally:
        if not keep:
            Lab.down_by_name(name)
    after = run(["ip", "netns", "list"]).stdout
    if not keep:
        left = "nothing left behind" if before == after else "WARNING: namespaces differ"
        console.print(f"\nlab {name} down: {left}")
