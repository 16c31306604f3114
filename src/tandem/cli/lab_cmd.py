"""`tandem lab ...`: a cluster of network-namespace hosts on this machine, and
the faults to throw at it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tandem.errors import LabError, TandemError
from tandem.lab.lab import Lab

app = typer.Typer(help="Network-namespace lab hosts and fault injection.", no_args_is_help=True)

LabOpt = typer.Option(None, "--lab", "-l", help="lab name (default: $TANDEM_LAB or 'tandem')")


def lab_name(name: str | None) -> str:
    return name or os.environ.get("TANDEM_LAB") or "tandem"


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab creates namespaces and bridges: run as root")


@app.command("up")
def up(lab: str = LabOpt) -> None:
    """Create the lab: hosts node1, node2, witness, client.

    They share a public and a replication network."""
    _require_root()
    created = Lab.up(lab_name(lab))
    _print_status(created.status())


@app.command("down")
def down(lab: str = LabOpt, keep_dir: bool = typer.Option(False, help="keep host directories")) -> None:
    """Remove the lab: processes, mounts, loop devices, namespaces, bridges."""
    _require_root()
    removed = Lab.down_by_name(lab_name(lab), keep_dir=keep_dir)
    typer.echo(f"lab {lab_name(lab)}: down ({len(removed)} objects removed)")


@app.command("status")
def status(lab: str = LabOpt, json_out: bool = typer.Option(False, "--json")) -> None:
    """Hosts, addresses, processes, partitions and slowed links."""
    st = Lab.load(lab_name(lab)).status()
    if json_out:
        typer.echo(json.dumps(st, indent=2))
    else:
        _print_status(st)


def _print_status(st: dict) -> None:
    console = Console()
    nets = ", ".join(f"{k} {v}" for k, v in st["networks"].items())
    console.print(f"Lab [bold]{st['lab']}[/bold]  ({nets})  dir {st['dir']}")
    table = Table(show_edge=False, box=None, pad_edge=False)
    for col in ("host", "public", "replication", "links", "processes"):
        table.add_column(col, justify="left")
    for h in st["hosts"]:
        procs = ", ".join(f"{p['name']}({p['pid']}{'' if p['running'] else ' dead'})"
                          for p in h["processes"]) or "-"
        table.add_row(h["name"], h["addresses"].get("public", "-"),
                      h["addresses"].get("replication", "-"), h["links"], procs)
    console.print(table)
    if st["partitions"]:
        cut = "; ".join(f"{a}->{b} ({n})" for a, b, n in st["partitions"])
        console.print(f"Partitions: {cut}")
    if st["slow"]:
        console.print("Slow links: " + ", ".join(f"{k} {v}" for k, v in st["slow"].items()))


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(ctx: typer.Context, host: str, lab: str = LabOpt) -> None:
    """Run a command inside a host: tandem lab exec node1 -- ip addr"""
    if not ctx.args:
        raise LabError("lab exec: give a command after the host, e.g. `tandem lab exec node1 -- ip addr`")
    raise typer.Exit(Lab.load(lab_name(lab)).exec(host, ctx.args))


@app.command("crash")
def crash(host: str, lab: str = LabOpt) -> None:
    """SIGKILL every process of a host and pull its cables."""
    killed = Lab.load(lab_name(lab)).faults.crash(host)
    typer.echo(f"{host}: crashed ({len(killed)} processes killed, links down)")


@app.command("restart")
def restart(host: str, lab: str = LabOpt) -> None:
    """Bring a crashed host's links back up."""
    Lab.load(lab_name(lab)).faults.restart(host)
    typer.echo(f"{host}: links up")


@app.command("partition")
def partition(
    side_a: str = typer.Argument(..., help="comma-separated hosts"),
    side_b: str = typer.Argument(None, help="comma-separated hosts (default: all others)"),
    net: str = typer.Option("both", help="public, replication or both"),
    one_way: bool = typer.Option(False, "--one-way", help="drop only what A sends to B"),
    lab: str = LabOpt,
) -> None:
    """Drop traffic between two sets of hosts."""
    the_lab = Lab.load(lab_name(lab))
    a = [h for h in side_a.split(",") if h]
    b = [h for h in side_b.split(",") if h] if side_b else \
        [h for h in the_lab.spec.host_names if h not in a]
    the_lab.faults.partition(a, b, net=net, one_way=one_way)
    arrow = "->" if one_way else "<->"
    typer.echo(f"partitioned {','.join(a)} {arrow} {','.join(b)} on {net}")


@app.command("heal")
def heal(lab: str = LabOpt) -> None:
    """Remove every partition."""
    Lab.load(lab_name(lab)).faults.heal()
    typer.echo("healed")


@app.command("pause")
def pause(host: str, process: str, lab: str = LabOpt) -> None:
    """SIGSTOP a process started in a host."""
    Lab.load(lab_name(lab)).faults.pause(host, process)
    typer.echo(f"{host}/{process}: paused")


@app.command("resume")
def resume(host: str, process: str, lab: str = LabOpt) -> None:
    """SIGCONT a paused process."""
    Lab.load(lab_name(lab)).faults.resume(host, process)
    typer.echo(f"{host}/{process}: resumed")


@app.command("slow")
def slow(host: str, rate: str = typer.Argument(..., help="tc rate, e.g. 1mbit"),
         net: str = typer.Option("both"), lab: str = LabOpt) -> None:
    """Rate-limit a host's links (tbf)."""
    Lab.load(lab_name(lab)).faults.slow(host, rate, net)
    typer.echo(f"{host}: limited to {rate} on {net}")


@app.command("unslow")
def unslow(host: str, lab: str = LabOpt) -> None:
    """Remove a host's rate limits."""
    Lab.load(lab_name(lab)).faults.unslow(host)
    typer.echo(f"{host}: rate limits removed")


@app.command("events")
def events(lab: str = LabOpt, kind: str = typer.Option(None)) -> None:
    """Print the lab's event log (JSON lines, CLOCK_MONOTONIC timestamps)."""
    for ev in Lab.load(lab_name(lab)).events.iter(kind):
        typer.echo(json.dumps(ev, sort_keys=True))


@app.command("torture-summary")
def torture_summary(
    reports: list[Path] = typer.Argument(..., help="report directories (or their results.json)"),
    json_out: bool = typer.Option(False, "--json", help="the combined record as JSON"),
) -> None:
    """Several campaigns as one table: schedules, faults by kind, unavailability, violations."""
    from tandem.lab import torture_report as rep
    results = []
    for path in reports:
        file = path / "results.json" if path.is_dir() else path
        try:
            results.append(json.loads(file.read_text()))
        except (OSError, ValueError) as e:
            raise TandemError(f"{file}: not a campaign's results.json ({e}); give the --report directory"
                              " of a finished `tandem lab torture`") from None
        if not isinstance(results[-1], dict) or "schedules" not in results[-1]:
            raise TandemError(f"{file}: not a campaign's results.json (no schedules); give the --report"
                              " directory of a finished `tandem lab torture`")
    combined = rep.combine(results)
    if json_out:
        typer.echo(json.dumps(combined, indent=1, sort_keys=True, default=str))
        return
    console = Console(width=max(Console().width, 110), emoji=False)  # "58:100:" is no emoji
    console.print(rep.summary_table(combined))
    runs = [f"seed {c['seed']} {c['schedules_run']} schedules ({c['violations']} violations)"
            for c in combined["campaigns"]]
    console.print("campaigns: " + ", ".join(runs), highlight=False)
    for line in rep.summary_lines(combined):
        console.print(line, highlight=False)


@app.command("torture-recheck")
def torture_recheck(
    reports: list[Path] = typer.Argument(..., help="--report directories of finished campaigns"),
) -> None:
    """Run today's checks again on finished campaigns' saved histories."""
    from tandem.lab import torture_report as rep
    bad = 0
    for path in reports:
        try:
            out = rep.recheck(path)
        except (OSError, ValueError, KeyError) as e:
            raise TandemError(f"{path}: cannot recheck ({e}); give the --report directory of a"
                              " finished `tandem lab torture`") from None
        bad += len(out["violations"])
        typer.echo(f"{path}: {out['schedules']} schedules, {len(out['violations'])} violation(s)"
                   f" (the campaign reported {out['was']})")
        for v in out["violations"]:
            typer.echo(f"  {v['schedule'] or '-'} {v['check']}: {v['what']}")
    if bad:
        raise typer.Exit(1)


@app.command("torture")
def torture(
    schedules: int = typer.Option(10, min=1, help="randomized fault schedules to run"),
    seed: int = typer.Option(1, help="seed of the schedules: the same seed gives the same faults"),
    duration: float = typer.Option(20.0, min=4.0, help="seconds of faults per schedule"),
    only: int = typer.Option(None, help="replay only schedule K of the seed"),
    converge_bound: float = typer.Option(120.0, help="seconds allowed to return to full redundancy"),
    volume_size: str = typer.Option("512MiB", help="size of the DB volume (the writer's table grows"
                                                    " ~40 MB an hour; verify reads all of it per schedule)"),
    lab: str = typer.Option(None, "--lab", "-l", help="lab name (default: torture)"),
    report: Path = typer.Option(None, help="directory for results.json and timeline.png"
                                           " (default: the lab's directory)"),
    keep: bool = typer.Option(False, help="leave the lab up afterwards"),
) -> None:
    """Fault campaign: N seeded fault schedules on one cluster, each checked.

    Crashes, partitions, pauses, slow links and disk errors under DB and API
    load; then heal, converge, check."""
    from tandem.lab import torture_report as rep
    from tandem.lab.torture import Campaign, Options
    from tandem.lab.writer import read_log
    _require_root()
    name = lab or os.environ.get("TANDEM_LAB") or "torture"
    console = Console(width=max(Console().width, 110), emoji=False)  # "58:100:" is no emoji
    Lab.down_by_name(name)
    the_lab = Lab.up(name)
    out = report or the_lab.spec.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    opts = Options(schedules=schedules, seed=seed, duration=duration, only=only,
                   converge_bound=converge_bound, volume_size=volume_size,
                   progress=lambda line: console.print(line, highlight=False),
                   stop_file=out / "STOP", evidence_dir=out / "evidence")
    (out / "STOP").unlink(missing_ok=True)
    console.print(f"lab {name}; to end early (with the checks): touch {out / 'STOP'}", highlight=False)
    campaign = Campaign(the_lab, opts)
    try:
        campaign.setup()
        campaign.run()
        result = campaign.finish()
        rep.write_json(result, out / "results.json")
        rep.write_json(campaign.history, out / "history.json")
        console.print(rep.summary_table(result))
        for line in rep.summary_lines(result):
            console.print(line, highlight=False)
        sched = rep.pick_schedule(result)
        if sched is not None and campaign.writer_log is not None:
            png = out / "timeline.png"
            rep.timeline_png(sched, the_lab.events.read(), read_log(str(campaign.writer_log))[0], png)
            console.print(f"timeline of schedule {sched['name']}: {png}")
        console.print(f"results: {out / 'results.json'}; event log: {the_lab.spec.event_file}")
    finally:
        campaign.teardown()
        import shutil
        if the_lab.spec.event_file.exists():  # the history, for replays and later checks
            shutil.copy(the_lab.spec.event_file, out / "events.jsonl")
        if campaign.writer_log is not None and campaign.writer_log.exists():
            shutil.copy(campaign.writer_log, out / "writer.jsonl")
        for log in [*the_lab.spec.dir.glob("hosts/*/log/*.log"),
                    *the_lab.spec.dir.glob("hosts/*/run/mariadb/**/*.log"),
                    *the_lab.spec.dir.glob("hosts/*/run/clones/*/*.log")]:
            (out / "logs").mkdir(exist_ok=True)
            host = log.relative_to(the_lab.spec.dir / "hosts").parts[0]
            shutil.copy(log, out / "logs" / f"{host}-{log.parent.name}-{log.name}")
        if not keep:
            if report is None:  # the lab's directory goes with the lab: keep the report
                keep_dir = Path("/var/tmp/tandem-torture") / name
                shutil.rmtree(keep_dir, ignore_errors=True)
                keep_dir.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(out, keep_dir)
                console.print(f"report kept in {keep_dir}")
            Lab.down_by_name(name)
    if result["violations"] or result["aborted"]:
        raise typer.Exit(1)
