"""Seeds the volume simulation once failed (batch of 12,020 schedules), replayed: each passes
now, and the broken variant that restores the old behaviour (of the product code and its
mirror in tandem.sim.replica) still fails the same way, so these tests can fail."""

from __future__ import annotations

import pytest

from tandem.sim import volworld

# seed -> (variant with the old behaviour, the violations it shows)
FIXED = {
    # promote() during the handshake started a generation the peer never heard of: the new
    # Primary became a SyncTarget (its writes then broke the protocol, or were overwritten)
    5000: ("promote_in_handshake", {"primary_sync_target"}),
    4965: ("promote_in_handshake", {"primary_sync_target"}),
    5881: ("promote_in_handshake", {"primary_sync_target"}),
    # an AL extent was dropped (evicted, or the log cleared on demotion) while a completed
    # write in it was only in a page cache; a crash lost it on one disk, nothing resynced it
    6216: ("al_drop_unflushed", {"replicas_differ"}),
    8979: ("al_drop_unflushed", {"replicas_differ"}),
    11562: ("al_drop_unflushed", {"replicas_differ"}),
    11688: ("al_drop_unflushed", {"lost_write"}),
    # the demotion emptied the log on disk but not in memory: after switching back, a write
    # into a still-listed extent was never logged, and the Primary's crash went unresynced
    314725: ("al_kept_after_demote", {"replicas_differ"}),
}

# The checker flagged a resync that overwrote a write the source never had, although the
# source held a later write over it (the target's crash had reverted the block): no loss.
SUPERSEDED = (4079, 7381)


# All were found with the write-back cache (the only one simulated then); they replay in it.
WB = "write-back"


@pytest.mark.parametrize("seed", sorted(FIXED) + list(SUPERSEDED))
@pytest.mark.parametrize("cache", volworld.CACHES)
def test_seed_passes(seed, cache):
    r = volworld.run(seed, cache=cache)
    assert not r.violations, [str(v) for v in r.violations]


@pytest.mark.parametrize("seed", sorted(FIXED))
def test_old_behaviour_fails_the_seed(seed):
    variant, kinds = FIXED[seed]
    r = volworld.run(seed, variant=variant, cache=WB)
    assert {v.kind for v in r.violations} & kinds, [str(v) for v in r.violations]


@pytest.mark.parametrize("seed", SUPERSEDED)
def test_superseded_write_is_no_split_brain(seed, monkeypatch):
    # with the old AL behaviour the crash reverts a block to an older acknowledged write
    assert not volworld.run(seed, variant="al_drop_unflushed", cache=WB).violations
    # ... which the checker, without following what overwrote what, took for a merge
    monkeypatch.setattr(volworld.VolWorld, "_descends", lambda self, newer, older: False)
    r = volworld.run(seed, variant="al_drop_unflushed", cache=WB)
    assert "split_brain_merged" in {v.kind for v in r.violations}
