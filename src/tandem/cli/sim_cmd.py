"""`tandem sim`: the deterministic simulation of the HA layer (tandem.sim.run)."""

from __future__ import annotations

import typer

from tandem.sim.agent import VARIANTS

app = typer.Typer(help="Deterministic simulation of the HA layer: fault schedules, checker, replay.",
                  no_args_is_help=False, invoke_without_command=True)


@app.callback(invoke_without_command=True)
def sim(schedules: int = typer.Option(1000, help="number of schedules"),
        seed: int = typer.Option(1, help="first schedule's seed (schedule i uses seed + i)"),
        minutes: float = typer.Option(None, help="stop starting schedules after this long"),
        variant: str = typer.Option("none", help=f"a deliberately broken agent: {', '.join(VARIANTS)}"),
        replay: int = typer.Option(None, help="run this one seed and print its whole trace"),
        keep: str = typer.Option(None, help="with --replay: only these fault indexes, e.g. 0,2"),
        as_is: bool = typer.Option(False, "--as-is", help="without the fixes the simulation proposes"),
        busy_watch: bool = typer.Option(False, "--busy-watch", help="member key rewritten every cycle"),
        no_shrink: bool = typer.Option(False, "--no-shrink")) -> None:
    """Run N schedules and print a summary; every violation with its seed and a shrunk trace."""
    from tandem.sim.run import main
    if variant not in VARIANTS:
        raise typer.BadParameter(f"variant must be one of {', '.join(VARIANTS)}")
    argv = ["--schedules", str(schedules), "--seed", str(seed), "--variant", variant]
    argv += ["--minutes", str(minutes)] if minutes is not None else []
    argv += ["--replay", str(replay)] if replay is not None else []
    argv += ["--keep", keep] if keep is not None else []
    argv += ["--as-is"] if as_is else []
    argv += ["--busy-watch"] if busy_watch else []
    argv += ["--no-shrink"] if no_shrink else []
    raise typer.Exit(main(argv))
