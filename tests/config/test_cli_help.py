"""Every command's help reads as prose at any terminal width: typer's rich help keeps
a docstring's line breaks, which fell mid-sentence in an 80-column terminal."""

from __future__ import annotations

import subprocess
import sys

import typer

from tandem.cli.main import app


def _commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), cmd


def test_every_command_help_is_one_line_per_paragraph():
    found = list(_commands(typer.main.get_command(app)))
    assert len(found) > 40, [p for p, _ in found]
    broken = []
    for path, cmd in found:
        for para in (cmd.help or "").split("\n\n"):
            lines = para.split("\n")
            if any(not ln.startswith(("- ", "* ", " ")) for ln in lines[1:]):
                broken.append(f"{path}: {para[:60]!r}")
    assert not broken, broken
    # the first paragraph is what the group's command list shows: short
    long = [p for p, c in found if len((c.help or "").split("\n\n")[0]) > 160]
    assert not long, long


def test_help_at_80_columns_breaks_only_at_the_terminal_edge():
    out = subprocess.run([sys.executable, "-m", "tandem.cli.main", "volume", "outdate", "--help"],
                         capture_output=True, text=True, timeout=60, env={"COLUMNS": "80", "PATH": ""})
    assert out.returncode == 0, out.stderr
    words = [ln.strip() for ln in out.stdout.splitlines() if ln.strip() and "│" not in ln
             and "╭" not in ln and "╰" not in ln]
    # no line of prose shorter than half the width unless it ends a sentence or paragraph
    stubs = [w for w in words[1:-1] if len(w) < 40 and not w.endswith((".", ":", ")"))]
    assert not stubs, out.stdout
