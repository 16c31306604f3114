"""`tandem sim`: deterministic simulations of the HA layer, the volume protocol and the
job ownership of the management servers (tandem.sim.run)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Deterministic simulation (ha, volume, jobs): fault schedules, checker, replay.",
                  no_args_is_help=False, invoke_without_command=True)


@app.callback(invoke_without_command=True)
def sim(model: str = typer.Option("ha", help="ha | volume | jobs | all"),
        schedules: int = typer.Option(1000, help="number of schedules (per model)"),
        seed: int = typer.Option(1, help="first schedule's seed (schedule i uses seed + i)"),
        workers: int = typer.Option(1, help="processes running schedules in parallel"),
        minutes: float = typer.Option(None, help="stop starting schedules after this long"),
        variant: str = typer.Option("none", help="a deliberately broken variant of the model"),
        replay: int = typer.Option(None, help="run this one seed and print its whole trace"),
        keep: str = typer.Option(None, help="with --replay: only these fault indexes, e.g. 0,2"),
        as_is: bool = typer.Option(False, "--as-is", help="ha: without the fixes the simulation proposes"),
        busy_watch: bool = typer.Option(False, "--busy-watch", help="ha: member key rewritten every cycle"),
        no_shrink: bool = typer.Option(False, "--no-shrink")) -> None:
    """Run N schedules and print a summary; every violation with its seed and a shrunk trace."""
    from tandem.sim.run import main
    if model not in ("ha", "volume", "jobs", "all"):
        typer.echo(f"--model: {model!r} is not one of ha, volume, jobs, all", err=True)
        raise typer.Exit(2)
    argv = ["--model", model, "--schedules", str(schedules), "--seed", str(seed), "--variant", variant,
            "--workers", str(workers)]
    argv += ["--minutes", str(minutes)] if minutes is not None else []
    argv += ["--replay", str(replay)] if replay is not None else []
    argv += ["--keep", keep] if keep is not None else []
    argv += ["--as-is"] if as_is else []
    argv += ["--busy-watch"] if busy_watch else []
    argv += ["--no-shrink"] if no_shrink else []
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a bad --model and the like (its message is printed)
        code = e.code if isinstance(e.code, int) else 2
    raise typer.Exit(code)
