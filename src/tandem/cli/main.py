"""The `tandem` command: one entry point, one sub-command group per room.

Every user-facing failure is a TandemError, printed here as one line on stderr
with a non-zero exit; nothing below this module prints tracebacks at users.
"""

from __future__ import annotations

import inspect
import os
import sys

import typer

# gRPC's C core logs its own view of a failure to stderr (24 lines for a bad CA file)
# before our one line says it; GRPC_VERBOSITY=ERROR in the environment brings it back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

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
def _reflow(doc: str) -> str:
    """A docstring as one line per paragraph (list items and indented lines keep
    theirs): typer's rich help keeps a docstring's line breaks, which then fall
    mid-sentence wherever the terminal is narrower than the source."""
    out = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in para.splitlines():
            if lines and not line.startswith(("- ", "* ", " ")) and not lines[-1].startswith(" "):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _reflow_help(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if doc:
            info.help = _reflow(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


app.add_typer(config_cmd.app, name="config")
app.add_typer(lab_cmd.app, name="lab")
app.add_typer(volume_cmd.app, name="volume")
app.add_typer(mgmt_cmd.app, name="mgmt")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(sim_cmd.app, name="sim")
app.add_typer(pki_cmd.app, name="pki")
app.command("demo")(demo_cmd.demo)
cluster_cmd.register(app)
_reflow_help(app)


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
            print(f"tandem: {e.format_message()} (see --help)", file=sys.stderr)
            sys.exit(e.exit_code or 2)
        if os.environ.get("TANDEM_TRACEBACK"):
            raise
        # A bug of ours: one line, and how to get the whole story.
        print(f"tandem: internal error: {type(e).__name__}: {e} (run again with TANDEM_TRACEBACK=1"
              " for the traceback, and report it)", file=sys.stderr)
        sys.exit(70)  # EX_SOFTWARE
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    run()
