"""Both cache modes of the replicated volume in its simulation (tandem.sim.volworld): with
write-through (even seeds) the application never flushes and every acknowledged write must
be durable on both disks; the broken variants of that contract are caught, by the check at
the acknowledgement and, without it, by the history (a crash loses the write)."""

from __future__ import annotations

import pytest

from tandem.sim import volworld
from tandem.sim.run import main

WT, WB = volworld.CACHES[1], volworld.CACHES[0]

# variant -> (a seed its acknowledgement check catches, a seed where a crash then loses an
# acknowledged write, found with that check off)
BROKEN = {
    # the peer writes a durable Write to its page cache and acknowledges it
    "wt_ack_before_durable": (2, 12),
    # the Primary writes without RWF_DSYNC
    "wt_no_local_sync": (2, 18),
}


def test_the_seed_picks_the_mode_and_an_option_forces_it():
    assert [volworld.cache_of(s) for s in (1, 2, 3)] == [WB, WT, WB]
    assert volworld.cache_of(2, WB) == WB and volworld.cache_of(1, WT) == WT
    with pytest.raises(ValueError, match="cache must be one of"):
        volworld.cache_of(1, "writeback")


def test_write_through_needs_no_flush_and_loses_nothing():
    wt, wb = volworld.run(2), volworld.run(2, cache=WB)
    assert wt.ok and wb.ok and "cache write-through" in wt.trace[0]
    assert wt.stats["writes_acked"] > 100 and wt.stats["write_through_runs"] == 1
    assert wt.stats["flushes"] == 0 and wt.stats["al_flushes"] == 0
    assert wb.stats["flushes"] > 10 and wb.stats["write_through_runs"] == 0


@pytest.mark.parametrize("variant", sorted(BROKEN))
def test_a_broken_write_through_is_caught(variant, monkeypatch):
    at_ack, by_history = BROKEN[variant]
    r = volworld.run(at_ack, variant=variant)
    assert "ack_not_durable" in {v.kind for v in r.violations}, [str(v) for v in r.violations[:3]]
    assert volworld.run(at_ack).ok and volworld.run(by_history).ok  # the real rules
    assert volworld.run(at_ack, variant=variant, cache=WB).ok  # write-back does not use it
    monkeypatch.setattr(volworld.VolWorld, "check_at_ack", False)
    r = volworld.run(by_history, variant=variant)
    assert {v.kind for v in r.violations} == {"lost_write"}, [str(v) for v in r.violations[:3]]
    assert "promoted without acknowledged writes" in r.violations[0].detail


def test_cli_cache_option(capsys):
    assert main(["--model", "volume", "--replay", "2", "--cache", WB]) == 0
    assert "cache write-back" in capsys.readouterr().out
    assert main(["--model", "volume", "--schedules", "2", "--seed", "1", "--cache", WT,
                 "--variant", "wt_ack_before_durable", "--no-shrink"]) == 1
    out = capsys.readouterr().out
    assert "--variant wt_ack_before_durable --cache write-through" in out
    assert "write_through_runs 2" in out
    assert main(["--model", "jobs", "--cache", WT, "--schedules", "1"]) == 2
    assert "volume model only" in capsys.readouterr().err
