"""`tandem bench ...`: benchmarks that print ratios against their peers (not tests)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import typer

from tandem.cluster.resources.config import EXT4_FEATURES
from tandem.errors import TandemError

app = typer.Typer(help="Benchmarks against peers, measured side by side (not tests).",
                  no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Benchmarks (kept a group even with one command)."""


@app.command("volume")
def volume(
    seconds: int = typer.Option(20, help="length of each sysbench run"),
    fio_seconds: int = typer.Option(15, help="length of each fio run"),
    threads: str = typer.Option("1,8", help="sysbench thread counts, comma separated"),
    rounds: int = typer.Option(4, help="interleaved slices per measurement (each system sees"
                               " the same background load)"),
    sparse: bool = typer.Option(False, help="sparse backing files instead of zero-filled ones"),
    size: str = typer.Option("1GiB", help="volume size (also the full-sync/raw-copy size)"),
    only: str = typer.Option(",".join(("sysbench", "fio", "floor", "resync")),
                             help="parts to run: sysbench,fio,floor,resync"),
    floor_writes: int = typer.Option(4000, help="4 KiB writes per kind in the floor part"),
    semisync: bool = typer.Option(True, help="include (c) MariaDB semi-sync replication"),
    ext4_options: str = typer.Option("", help="extra ext4 mount options on the volume"),
    mkfs_features: str = typer.Option(",".join(EXT4_FEATURES),
                                      help="ext4 features for the volume's mkfs (mkfs.ext4 -O):"
                                      " by default those the agent's filesystem resource makes;"
                                      " '' for none"),
    cache: str = typer.Option("write-through", help="the volume's cache mode: write-through"
                              " or write-back"),
    lab: str = typer.Option("bench", help="name of the private lab (created and removed)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
):
    """The replicated volume vs local disk vs MariaDB semi-sync (issue 4 benchmark)."""
    from tandem.bench.volume import PARTS, BenchOptions, render, run

    parts = _parts(only, PARTS)
    if cache not in ("write-through", "write-back"):
        raise TandemError(f"--cache: {cache!r} is not write-through or write-back")
    if mkfs_features and not re.fullmatch(r"\^?[a-z0-9_]+(,\^?[a-z0-9_]+)*", mkfs_features):
        raise TandemError(f"--mkfs-features: {mkfs_features!r} is not a comma-separated list of"
                          " ext4 features (e.g. fast_commit or ^metadata_csum)")
    if not 100 <= floor_writes <= 1_000_000:
        raise TandemError(f"--floor-writes: {floor_writes} is not within 100..1000000")
    try:
        thread_counts = tuple(int(t) for t in threads.split(",") if t.strip())
    except ValueError:
        raise TandemError(f"--threads: not a list of integers: {threads!r}") from None
    opts = BenchOptions(lab=lab, seconds=seconds, fio_seconds=fio_seconds,
                        threads=thread_counts, rounds=rounds, volume_size=size, parts=parts,
                        semisync=semisync, ext4_options=ext4_options, cache=cache,
                        mkfs_features=mkfs_features, preallocate=not sparse,
                        floor_writes=floor_writes)

    def say(msg: str) -> None:
        if not as_json:
            typer.echo(f"· {msg}", err=True)

    res = run(opts, say)
    if as_json:
        typer.echo(json.dumps(res, indent=1))
    else:
        render(res)


@app.command("seal")
def seal(
    rounds: int = typer.Option(3, help="alternating plain/sealed rounds (medians reported)"),
    writes: int = typer.Option(3000, help="4 KiB writes per round, one at a time"),
    mib: int = typer.Option(512, help="MiB streamed in 1 MiB frames per round"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
):
    """What sealing the replication frames costs: the real link, plain vs sealed."""
    from tandem.bench.seal import render, run

    if rounds < 1 or writes < 100 or mib < 16:
        raise TandemError("--rounds must be at least 1, --writes at least 100, --mib at least 16")
    _run_and_report(lambda _opts, say: run(rounds, writes, mib, say),
                    lambda res, _command: render(res), None, as_json, None)


@app.command("failover")
def failover(
    crashes: int = typer.Option(5, help="hard-crash failovers of the primary (issue: repeated)"),
    switchovers: int = typer.Option(5, help="graceful switchovers"),
    steady: float = typer.Option(60.0, help="seconds of the no-fault steady run under load"
                                 " (the issue asks for 600)"),
    keepalived_rounds: int = typer.Option(None, "--keepalived-rounds",
                                          help="keepalived VIP moves (default: as many as --crashes)"),
    settle: float = typer.Option(2.0, help="seconds of undisturbed writes before each fault"),
    only: str = typer.Option("steady,crash,switchover,keepalived",
                             help="parts to run: steady,crash,switchover,keepalived"),
    lease_ttl: int = typer.Option(1, help="etcd lease TTL of the leader key (s)"),
    lab: str = typer.Option("bfo", help="name of the private lab (created and removed)"),
    connect_timeout: float = typer.Option(None, "--connect-timeout",
                                          help="use a writer with this connect timeout (s) instead"
                                          " of the lab writer's 1 s"),
    save: Path = typer.Option(None, "--save", help="also write the results as JSON to this file"),
    keep: bool = typer.Option(False, help="leave the lab up afterwards (debugging)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
):
    """Crash failovers and switchovers under a writer vs keepalived (issue 5 benchmark)."""

    from tandem.bench.failover import PARTS, FailoverOptions, render, run

    parts = _parts(only, PARTS)
    for name, v in (("--crashes", crashes), ("--switchovers", switchovers),
                    ("--keepalived-rounds", keepalived_rounds)):
        if v is not None and not 0 <= v <= 1000:
            raise TandemError(f"{name} {v}: must be between 0 and 1000")
    if connect_timeout is not None and not 0 < connect_timeout <= 30:
        raise TandemError(f"--connect-timeout {connect_timeout:g}: must be in (0, 30] seconds")
    if steady < 0:
        raise TandemError(f"--steady {steady:g}: must not be negative")
    opts = FailoverOptions(lab=lab, crashes=crashes, switchovers=switchovers, steady_seconds=steady,
                           keepalived_rounds=crashes if keepalived_rounds is None else keepalived_rounds,
                           settle=settle, parts=parts, lease_ttl=lease_ttl, keep=keep,
                           connect_timeout=connect_timeout)

    _run_and_report(run, render, opts, as_json, save)


def _parts(only: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """`--only a,b`: the parts to run, each one the benchmark knows."""
    parts = tuple(p.strip() for p in only.split(",") if p.strip())
    bad = [p for p in parts if p not in known]
    if bad:
        raise TandemError(f"--only: unknown part(s) {', '.join(bad)} (choose from {', '.join(known)})")
    return parts


def _run_and_report(run, render, opts, as_json: bool, save: Path | None) -> None:
    """Run a benchmark with progress on stderr; table or JSON on stdout, optional file."""
    def say(msg: str) -> None:
        if not as_json:
            typer.echo(f"· {msg}", err=True)

    res = run(opts, say)
    res["command"] = " ".join(["tandem", *sys.argv[1:]])
    if save is not None:
        save.write_text(json.dumps(res, indent=1, default=str) + "\n")
    if as_json:
        typer.echo(json.dumps(res, indent=1, default=str))
    else:
        render(res, res["command"])
    if res.get("errors"):
        raise typer.Exit(1)  # the lab could not be driven through every round


@app.command("mgmt")
def mgmt(
    seconds: float = typer.Option(8.0, help="length of one throughput slice"),
    rounds: int = typer.Option(2, help="slice quadruples (1,2,2,1 servers) per measurement"),
    list_workers: int = typer.Option(6, help="concurrent clients for list calls"),
    deploy_workers: int = typer.Option(4, help="concurrent clients submitting deploys"),
    load_workers: int = typer.Option(3, help="concurrent clients during the faults"),
    op_seconds: float = typer.Option(0.2, help="simulated host operation time (s)"),
    db_retry: float = typer.Option(10.0, help="the servers' database retry budget (s): the bound"),
    only: str = typer.Option("list,deploy,faults", help="parts to run: list,deploy,faults"),
    lab: str = typer.Option("hmbench", help="name of the private lab (created and removed)"),
    keep: bool = typer.Option(False, help="leave the lab up afterwards (debugging)"),
    save: Path = typer.Option(None, "--save", help="also write the results as JSON to this file"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
):
    """Management API throughput with one vs two servers (issue 6 benchmark).

    Also failed requests and lost or duplicated jobs across a DB switchover and a
    DB primary crash."""

    from tandem.bench.mgmt import PARTS, MgmtBenchOptions, render, run

    parts = _parts(only, PARTS)
    if not parts:
        raise TandemError(f"--only: no part given (choose from {', '.join(PARTS)})")
    for name, v, lo, hi in (("--seconds", seconds, 1, 600), ("--rounds", rounds, 1, 20),
                            ("--list-workers", list_workers, 1, 64),
                            ("--deploy-workers", deploy_workers, 1, 64),
                            ("--load-workers", load_workers, 1, 64), ("--op-seconds", op_seconds, 0, 30),
                            ("--db-retry", db_retry, 1, 120)):
        if not lo <= v <= hi:
            raise TandemError(f"{name} {v:g}: must be between {lo} and {hi}")
    opts = MgmtBenchOptions(lab=lab, seconds=seconds, rounds=rounds, list_workers=list_workers,
                            deploy_workers=deploy_workers, load_workers=load_workers, op_seconds=op_seconds,
                            db_retry=db_retry, keep=keep, parts=parts)

    _run_and_report(run, render, opts, as_json, save)


if __name__ == "__main__":  # until it is wired into `tandem bench`
    app()
