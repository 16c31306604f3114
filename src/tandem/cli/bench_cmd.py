"""`tandem bench ...`: benchmarks that print ratios against their peers (not tests)."""

from __future__ import annotations

import json

import typer

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
    only: str = typer.Option(",".join(("sysbench", "fio", "resync")),
                             help="parts to run: sysbench,fio,resync"),
    semisync: bool = typer.Option(True, help="include (c) MariaDB semi-sync replication"),
    ext4_options: str = typer.Option("", help="extra ext4 mount options on the volume"),
    lab: str = typer.Option("bench", help="name of the private lab (created and removed)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
):
    """The replicated volume vs local disk vs MariaDB semi-sync (issue 4 benchmark)."""
    from tandem.bench.volume import PARTS, BenchOptions, render, run

    parts = tuple(p.strip() for p in only.split(",") if p.strip())
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise TandemError(f"--only: unknown part(s) {', '.join(bad)} (choose from"
                          f" {', '.join(PARTS)})")
    try:
        thread_counts = tuple(int(t) for t in threads.split(",") if t.strip())
    except ValueError:
        raise TandemError(f"--threads: not a list of integers: {threads!r}") from None
    opts = BenchOptions(lab=lab, seconds=seconds, fio_seconds=fio_seconds,
                        threads=thread_counts, rounds=rounds, volume_size=size, parts=parts,
                        semisync=semisync, ext4_options=ext4_options,
                        preallocate=not sparse)

    def say(msg: str) -> None:
        if not as_json:
            typer.echo(f"· {msg}", err=True)

    res = run(opts, say)
    if as_json:
        typer.echo(json.dumps(res, indent=1))
    else:
        render(res)


if __name__ == "__main__":  # until it is wired into `tandem bench`
    app()
