"""`tandem bench seal` runs the real link both ways and reports what it measured (the
numbers themselves are the benchmark's business, not a test's)."""

from __future__ import annotations

import json
import subprocess
import sys

from tandem.bench.seal import LABELS, MODES, run


def test_one_small_round_measures_both_modes():
    res = run(rounds=1, writes=200, mib=16)
    for mode in MODES:
        assert set(res["median"][mode]) == set(LABELS)
        assert all(v > 0 for v in res["median"][mode].values()), res["median"][mode]
        assert len(res["rounds"][mode]) == 1
    assert set(res["sealed_vs_plain"]) == set(LABELS)


def test_the_cli_prints_json_and_refuses_bad_options():
    cli = [sys.executable, "-m", "tandem.cli.main", "bench", "seal"]
    out = subprocess.run([*cli, "--rounds", "1", "--writes", "100", "--mib", "16", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["median"]) == set(MODES)
    bad = subprocess.run([*cli, "--writes", "5"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--writes at least 100" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
