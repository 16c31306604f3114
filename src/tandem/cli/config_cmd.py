"""`tandem config ...`: check a cluster config before anything acts on it."""

from __future__ import annotations

from pathlib import Path

import typer

from tandem.config import load_config

app = typer.Typer(help="Validate cluster configuration files.", no_args_is_help=True)


@app.command("check")
def check(file: Path = typer.Argument(..., help="the cluster's TOML file")) -> None:
    """Print `ok`, or one line per problem naming the key; exit 2 on problems."""
    load_config(file)
    typer.echo("ok")
