"""The `tandem` command: one entry point, one sub-command group per room.

Every user-facing failure is a TandemError, printed here as one line on stderr
with a non-zero exit; nothing below this module prints tracebacks at users.
"""

from __future__ import annotations

import sys

import typer

from tandem.cli import (
    bench_cmd,
    cluster_cmd,
    config_cmd,
    demo_cmd,
    lab_cmd,
    mgmt_cmd,
    pki_cmd,
    sim_cmd,
    volume_cmd,
)
from tandem.errors import TandemError

app = typer.Typer(
    name="tandem",
    help="High availability for a database-backed management tier, on one tested stack.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(lab_cmd.app, name="lab")
app.add_typer(volume_cmd.app, name="volume")
app.add_typer(mgmt_cmd.app, name="mgmt")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(sim_cmd.app, name="sim")
app.add_typer(pki_cmd.app, name="pki")
app.command("demo")(demo_cmd.demo)
cluster_cmd.register(app)


def run() -> None:
    try:
        rc = app(standalone_mode=False)
    except TandemError as e:
        for line in str(e).splitlines() or ["error"]:
            print(f"tandem: {line}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("tandem: aborted", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("tandem: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        try:
            from click.exceptions import ClickException
        except ImportError:  # typer vendors its own click
            from typer._click.exceptions import ClickException  # type: ignore[no-redef]
        if isinstance(e, ClickException):
            print(f"tandem: {e.format_message()}", file=sys.stderr)
            sys.exit(e.exit_code or 2)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    run()
