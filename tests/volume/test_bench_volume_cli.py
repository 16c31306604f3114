"""`tandem bench volume` refuses bad options in one line before it brings anything up
(a typo must not cost a lab's set-up, nor leave half of one behind)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "tandem.cli.main", "bench", "volume", "--lab", "tbadopt"]


@pytest.mark.parametrize(("args", "says"), [
    (["--cache", "write-around"], "--cache: 'write-around' is not write-through or write-back"),
    (["--threads", "1,x"], "--threads: not a list of integers"),
    (["--only", "sysbench,nope"], "nope"),
    (["--mkfs-features", "fast_commit;reboot"], "--mkfs-features: 'fast_commit;reboot' is not"),
    (["--mkfs-features", "fast_commit,"], "--mkfs-features"),
])
def test_bad_options_get_one_line_and_no_lab(args, says):
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "tbadopt" not in netns
