"""Generation identifiers: the sync decision and split-brain policies."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.volume import genid
from tandem.volume.genid import (
    GenerationIds,
    SplitBrainPolicy,
    SyncFlags,
    SyncOutcome,
    decide_sync,
)
from tandem.volume.states import DiskState, Role

Out = SyncOutcome
A = SyncFlags(node="node1")
B = SyncFlags(node="node2")


def decide(
    local: GenerationIds,
    peer: GenerationIds,
    lf: SyncFlags = A,
    pf: SyncFlags = B,
    policy: SplitBrainPolicy = SplitBrainPolicy.DISCONNECT,
) -> SyncOutcome:
    return decide_sync(local, peer, lf, pf, policy).outcome


@pytest.mark.parametrize(
    ("local", "peer", "expected"),
    [
        (GenerationIds(10), GenerationIds(10), Out.NO_SYNC),
        (GenerationIds(11, 10), GenerationIds(10), Out.SOURCE_BITMAP),
        (GenerationIds(10), GenerationIds(11, 10), Out.TARGET_BITMAP),
        (GenerationIds(10), GenerationIds(0), Out.SOURCE_FULL),
        (GenerationIds(0), GenerationIds(10), Out.TARGET_FULL),
        (GenerationIds(12, 0, (11, 10)), GenerationIds(10), Out.SOURCE_FULL),
        (GenerationIds(10), GenerationIds(12, 0, (11, 10)), Out.TARGET_FULL),
        (GenerationIds(11, 10), GenerationIds(12, 10), Out.SPLIT_BRAIN),
        (GenerationIds(11, 0, (9,)), GenerationIds(12, 0, (9,)), Out.SPLIT_BRAIN),
        (GenerationIds(11, 10, (9,)), GenerationIds(21, 20, (19,)), Out.UNRELATED),
    ],
)
def test_decision_table(local: GenerationIds, peer: GenerationIds, expected: SyncOutcome) -> None:
    assert decide(local, peer) is expected
    assert decide(peer, local, B, A) is expected.mirror()


def test_both_fresh_full_sync_from_the_up_to_date_side() -> None:
    up = SyncFlags(node="node1", disk=DiskState.UP_TO_DATE)
    inc = SyncFlags(node="node2", disk=DiskState.INCONSISTENT)
    fresh = GenerationIds()
    assert decide(fresh, fresh, up, inc) is Out.SOURCE_FULL
    assert decide(fresh, fresh, inc, up) is Out.TARGET_FULL
    inc1 = SyncFlags(node="node1", disk=DiskState.INCONSISTENT)
    assert decide(fresh, fresh, inc1, inc) is Out.NO_SYNC


def test_diskless_side_never_syncs() -> None:
    diskless = SyncFlags(node="node2", disk=DiskState.DISKLESS)
    assert decide(GenerationIds(11, 10), GenerationIds(10), A, diskless) is Out.NO_SYNC


def test_crashed_primary_resyncs_its_activity_log() -> None:
    crashed = SyncFlags(node="node1", crashed_primary=True)
    assert decide(GenerationIds(10), GenerationIds(10), crashed, B) is Out.SOURCE_BITMAP
    both = SyncFlags(node="node2", crashed_primary=True)
    first = decide(GenerationIds(10), GenerationIds(10), crashed, both)
    assert first.mirror() is decide(GenerationIds(10), GenerationIds(10), both, crashed)
    assert first in (Out.SOURCE_BITMAP, Out.TARGET_BITMAP)


def test_an_inconsistent_side_is_a_full_sync_target_not_a_split_brain() -> None:
    """Torture campaign seed 7: a failed disk, its node rebooted, `volume invalidate`:
    the generations look like a split brain, but an Inconsistent disk has nothing to keep."""
    inc = SyncFlags(node="node2", disk=DiskState.INCONSISTENT)
    assert decide(GenerationIds(11, 10), GenerationIds(12, 10), A, inc) is Out.SOURCE_FULL
    assert decide(GenerationIds(12, 10), GenerationIds(11, 10), inc, A) is Out.TARGET_FULL
    outdated = SyncFlags(node="node1", disk=DiskState.OUTDATED)  # no UpToDate source: unchanged
    assert decide(GenerationIds(11, 10), GenerationIds(12, 10), outdated, inc) is Out.SPLIT_BRAIN


def test_an_interrupted_resync_resumes_from_the_bitmaps_not_from_scratch() -> None:
    """The target of a bitmap resync is Inconsistent until it is done; the link breaks
    halfway. Its identifiers name the source's resync, so the next connect resumes with
    the bitmaps (a few changed blocks), not a full sync of the whole device."""
    inc = SyncFlags(node="node2", disk=DiskState.INCONSISTENT)
    src = genid.start_resync_source(genid.new_current(GenerationIds(10), 11), 99)
    dst = genid.start_resync_target(GenerationIds(10), src.bitmap)
    assert decide(src, dst, A, inc) is Out.SOURCE_BITMAP
    assert decide(dst, src, inc, A) is Out.TARGET_BITMAP
    src = genid.new_current(src, 12)  # the source went on writing alone: still the same bitmap
    assert decide(src, dst, A, inc) is Out.SOURCE_BITMAP
    # an Inconsistent disk from elsewhere (invalidated, replaced) still gets everything
    assert decide(src, GenerationIds(77, 0, (10,)), A, inc) is Out.SOURCE_FULL


def test_same_generation_but_inconsistent_side_gets_full_sync() -> None:
    inc = SyncFlags(node="node2", disk=DiskState.INCONSISTENT)
    assert decide(GenerationIds(10), GenerationIds(10), A, inc) is Out.SOURCE_FULL


def test_an_outdated_disk_on_the_same_data_as_an_up_to_date_peer_is_up_to_date() -> None:
    """The fenced node's agent outdated its disk, but the Primary wrote nothing since:
    the connect finds the same data, and the disk is current again (DRBD does the same).
    Anything else (data marked out of sync, a crashed Primary's activity log, both
    Outdated, a different generation) keeps the disk as it is until a resync."""
    up, out = DiskState.UP_TO_DATE, DiskState.OUTDATED
    outdated = SyncFlags(node="node2", disk=out)
    d = decide_sync(GenerationIds(10), GenerationIds(10), A, outdated)
    assert d.outcome is Out.NO_SYNC and d.same_data and d.mirror().same_data
    assert genid.disk_after_connect(d.same_data, out, up) is up
    assert genid.disk_after_connect(d.same_data, up, out) is up  # the UpToDate side
    assert genid.disk_after_connect(d.same_data, out, out) is out  # nobody current
    assert genid.disk_after_connect(d.same_data, DiskState.INCONSISTENT, up) is DiskState.INCONSISTENT
    for lf, pf in [(SyncFlags(node="node1", bitmap_weight=3), outdated),
                   (SyncFlags(node="node1", crashed_primary=True), outdated)]:
        d = decide_sync(GenerationIds(10), GenerationIds(10), lf, pf)
        assert not d.same_data and d.outcome is not Out.NO_SYNC
    d = decide_sync(GenerationIds(11, 10), GenerationIds(10), A, outdated)
    assert not d.same_data and d.outcome is Out.SOURCE_BITMAP


def test_an_outdated_disk_with_marked_blocks_is_never_the_source_of_an_up_to_date_one() -> None:
    """A disk back from a failure while its peer had every write (`attach`: Outdated,
    its activity log in its bitmap), on the generation both still share: its marks,
    or its crashed Primary's log, used to make it the source by the name tie-break
    (or as the crashed Primary), overwriting the peer's copy of what it lacks."""
    up, out = DiskState.UP_TO_DATE, DiskState.OUTDATED
    same = GenerationIds(10)
    for outdated in (SyncFlags(node="node2", disk=out, bitmap_weight=1024),
                     SyncFlags(node="node2", disk=out, crashed_primary=True, bitmap_weight=1024)):
        for current in (SyncFlags(node="node1", disk=up), SyncFlags(node="node3", disk=up, bitmap_weight=2)):
            d = decide_sync(same, same, current, outdated)
            assert d.outcome is Out.SOURCE_BITMAP, (current, outdated, d)
            assert decide_sync(same, same, outdated, current).outcome is Out.TARGET_BITMAP
    # both UpToDate: as before (the larger name, or the crashed Primary)
    d = decide_sync(same, same, SyncFlags(node="node1", disk=up),
                    SyncFlags(node="node2", disk=up, bitmap_weight=3))
    assert d.outcome is Out.TARGET_BITMAP


def test_lifecycle_disconnect_write_resync() -> None:
    both = GenerationIds(10)
    a = genid.new_current(both, 11)  # a Primary writes while b is away
    assert a == GenerationIds(11, 10)
    assert decide(a, both) is Out.SOURCE_BITMAP
    a = genid.new_current(a, 12)  # demote/promote again while still away
    assert a.bitmap == 10 and a.history == (11,)
    assert decide(a, both) is Out.SOURCE_BITMAP
    # resync starts, then the link breaks: resumes as a bitmap resync
    a = genid.start_resync_source(a, 50)
    b = genid.start_resync_target(both, a.bitmap)
    assert decide(a, b) is Out.SOURCE_BITMAP
    assert decide(b, a, B, A) is Out.TARGET_BITMAP
    # resync finishes: identical generations
    a = genid.finish_resync_source(a)
    b = genid.finish_resync_target(b, a.current)
    assert a.bitmap == 0 and decide(a, b) is Out.NO_SYNC


def test_interrupted_full_sync_resumes_as_bitmap_sync() -> None:
    a, b = GenerationIds(10), GenerationIds()
    assert decide(a, b) is Out.SOURCE_FULL
    a = genid.start_resync_source(a, 77)
    b = genid.start_resync_target(b, 77)
    assert decide(a, b) is Out.SOURCE_BITMAP


def test_a_start_of_resync_the_target_never_heard_of_is_undone() -> None:
    """Torture 57:30: a split brain resolved by policy (node2 the source), the link
    broke before node1 adopted node2's sync identifier, node2 went on writing as
    Primary. The next connect must resolve the same split brain again by a bitmap
    resync, not refuse it as one with only a common ancestor (StandAlone)."""
    policy = SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY
    lost = SyncFlags(node="node1", lost_leadership=True)
    a = genid.new_current(GenerationIds(10), 11)  # node1 wrote while apart
    b = genid.new_current(GenerationIds(10), 12)  # node2 was promoted and wrote
    assert decide(a, b, lost, B, policy) is Out.TARGET_BITMAP
    b = genid.start_resync_source(b, 99)  # node1 never hears of it
    b = genid.new_current(b, 13)  # the link broke again; node2 writes on alone
    d = decide_sync(a, b, lost, B, policy)
    assert d.outcome is Out.TARGET_BITMAP and d.split_brain_resolved
    assert decide_sync(b, a, B, lost, policy).outcome is Out.SOURCE_BITMAP
    assert decide_sync(a, b, A, B).bitmap_repairable  # without a policy: still repairable
    # once the target adopted the identifier, nothing is undone: a plain interrupted resync
    a2 = genid.start_resync_target(a, b.bitmap)
    assert decide(a2, b) is Out.TARGET_BITMAP and decide(b, a2, B, A) is Out.SOURCE_BITMAP


def test_a_lost_start_of_resync_does_not_widen_to_a_full_sync() -> None:
    a = GenerationIds(10)
    b = genid.start_resync_source(genid.new_current(a, 11), 99)
    b = genid.new_current(b, 12)
    assert decide(a, b) is Out.TARGET_BITMAP
    assert decide(b, a, B, A) is Out.SOURCE_BITMAP


def test_new_identifiers_must_be_non_zero() -> None:
    with pytest.raises(ValueError):
        genid.new_current(GenerationIds(1), 0)
    with pytest.raises(ValueError):
        GenerationIds(1, 2, (3, 4, 5, 6, 7))


def test_history_is_bounded() -> None:
    ids = GenerationIds(1)
    for uuid in range(2, 20):
        ids = genid.finish_resync_target(ids, uuid)
    assert len(ids.history) == genid.HISTORY_LEN and ids.history[0] == 18


# --- split brain -------------------------------------------------------------

SB_A, SB_B = GenerationIds(11, 10), GenerationIds(12, 10)


def test_split_brain_is_refused_by_default() -> None:
    d = decide_sync(SB_A, SB_B, A, B)
    assert d.outcome is Out.SPLIT_BRAIN and d.outcome.refused and d.bitmap_repairable


def test_discard_my_data_wins_over_policy() -> None:
    me = SyncFlags(node="node1", discard_my_data=True)
    assert decide(SB_A, SB_B, me, B) is Out.TARGET_BITMAP
    assert decide(SB_B, SB_A, B, me) is Out.SOURCE_BITMAP
    peer_too = SyncFlags(node="node2", discard_my_data=True)
    assert decide(SB_A, SB_B, me, peer_too) is Out.SPLIT_BRAIN
    # history-only split brain needs a full sync, and only manual discard does it
    h_a, h_b = GenerationIds(11, 0, (9,)), GenerationIds(12, 0, (9,))
    assert decide(h_a, h_b, me, B) is Out.TARGET_FULL
    zero = SplitBrainPolicy.DISCARD_ZERO_CHANGES
    assert decide(h_a, h_b, A, SyncFlags(node="node2"), zero) is Out.SPLIT_BRAIN


def test_discard_zero_changes() -> None:
    policy = SplitBrainPolicy.DISCARD_ZERO_CHANGES
    changed = SyncFlags(node="node1", bitmap_weight=5)
    unchanged = SyncFlags(node="node2", bitmap_weight=0)
    assert decide(SB_A, SB_B, changed, unchanged, policy) is Out.SOURCE_BITMAP
    assert decide(SB_B, SB_A, unchanged, changed, policy) is Out.TARGET_BITMAP
    both = SyncFlags(node="node2", bitmap_weight=3)
    assert decide(SB_A, SB_B, changed, both, policy) is Out.SPLIT_BRAIN


def test_discard_secondary() -> None:
    policy = SplitBrainPolicy.DISCARD_SECONDARY
    prim = SyncFlags(node="node1", role=Role.PRIMARY)
    sec = SyncFlags(node="node2", role=Role.SECONDARY)
    assert decide(SB_A, SB_B, prim, sec, policy) is Out.SOURCE_BITMAP
    assert decide(SB_B, SB_A, sec, prim, policy) is Out.TARGET_BITMAP
    assert decide(SB_A, SB_B, SyncFlags(node="node1"), sec, policy) is Out.SPLIT_BRAIN


def test_discard_least_recent_primary() -> None:
    policy = SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY
    lost = SyncFlags(node="node1", lost_leadership=True)
    assert decide(SB_A, SB_B, lost, B, policy) is Out.TARGET_BITMAP
    assert decide(SB_A, SB_B, A, B, policy) is Out.SPLIT_BRAIN
    assert decide_sync(SB_A, SB_B, A, B, policy).policy_undecided  # the nodes try again later
    assert not decide_sync(SB_A, SB_B, A, B).policy_undecided  # "disconnect": the operator decides
    # torture 10:4: both had been told they lost leadership; one is Primary again (it holds
    # the key now): the Secondary is the least recent Primary
    prim = SyncFlags(node="node1", role=Role.PRIMARY, lost_leadership=True)
    sec = SyncFlags(node="node2", role=Role.SECONDARY, lost_leadership=True)
    assert decide(SB_A, SB_B, prim, sec, policy) is Out.SOURCE_BITMAP
    assert decide(SB_B, SB_A, sec, prim, policy) is Out.TARGET_BITMAP
    both = SyncFlags(node="node2", role=Role.PRIMARY)
    assert decide(SB_A, SB_B, SyncFlags(node="node1", role=Role.PRIMARY), both, policy) is Out.SPLIT_BRAIN


def test_least_recent_primary_ranks_by_the_persistent_epoch_not_the_memory_of_losing() -> None:
    """Torture 90:37: node2 (promoted at epoch 42) lost the key and was demoted, then
    crashed: restarted, it no longer knew it had lost leadership. node1 (epoch 43)
    wrote 675 acknowledged writes, then lost the key too and remembered it. The
    in-memory mark alone made node1 the victim: the newer data went."""
    policy = SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY
    node1 = SyncFlags(node="node1", lost_leadership=True, primary_epoch=43)
    node2 = SyncFlags(node="node2", lost_leadership=False, primary_epoch=42)
    assert decide(SB_A, SB_B, node1, node2, policy) is Out.SOURCE_BITMAP
    assert decide(SB_B, SB_A, node2, node1, policy) is Out.TARGET_BITMAP
    assert decide_sync(SB_A, SB_B, node1, node2, policy).reason.endswith(
        "node2 was last promoted at epoch 42, node1 at 43")  # the log line says why
    # without epochs (promotions by hand) the mark still decides
    assert decide(SB_A, SB_B, replace(node1, primary_epoch=0), node2, policy) is Out.TARGET_BITMAP


def test_least_recent_primary_never_keeps_an_outdated_disk() -> None:
    policy = SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY
    outdated = SyncFlags(node="node1", disk=DiskState.OUTDATED, role=Role.PRIMARY, primary_epoch=9)
    current = SyncFlags(node="node2", lost_leadership=True, primary_epoch=8)
    assert decide(SB_A, SB_B, outdated, current, policy) is Out.TARGET_BITMAP
    assert decide(SB_B, SB_A, current, outdated, policy) is Out.SOURCE_BITMAP
    assert decide_sync(SB_B, SB_A, current, outdated, policy).reason.endswith("node1's disk is Outdated")


# --- properties --------------------------------------------------------------

pool = st.sampled_from([0, 1, 2, 3, 4])
small_ids = st.builds(
    GenerationIds, pool, pool, st.lists(st.sampled_from([1, 2, 3, 4]), max_size=3).map(tuple)
)


def flags(node: str) -> st.SearchStrategy[SyncFlags]:
    return st.builds(
        SyncFlags,
        node=st.just(node),
        disk=st.sampled_from([DiskState.UP_TO_DATE, DiskState.OUTDATED, DiskState.INCONSISTENT]),
        role=st.sampled_from(Role),
        crashed_primary=st.booleans(),
        discard_my_data=st.booleans(),
        lost_leadership=st.booleans(),
        primary_epoch=st.sampled_from([0, 42, 43]),
        bitmap_weight=st.sampled_from([0, 7]),
        vouches_for_peer=st.booleans(),
    )


@settings(max_examples=400, deadline=None)
@given(small_ids, small_ids, flags("node1"), flags("node2"), st.sampled_from(SplitBrainPolicy))
def test_decision_is_symmetric(
    a: GenerationIds, b: GenerationIds, fa: SyncFlags, fb: SyncFlags, policy: SplitBrainPolicy
) -> None:
    ours = decide_sync(a, b, fa, fb, policy)
    theirs = decide_sync(b, a, fb, fa, policy)
    assert theirs.outcome is ours.outcome.mirror()
    assert theirs.vouched == ours.vouched


@settings(max_examples=400, deadline=None)
@given(small_ids, small_ids, flags("node1"), flags("node2"), st.sampled_from(SplitBrainPolicy))
def test_a_vouch_only_lifts_an_outdated_disk_on_the_same_generation(
    a: GenerationIds, b: GenerationIds, fa: SyncFlags, fb: SyncFlags, policy: SplitBrainPolicy
) -> None:
    """Only an Outdated disk is vouched for, only by a voucher, only on the same current
    generation; with no vouch (or no Outdated disk), the decision is what it was."""
    d = decide_sync(a, b, fa, fb, policy)
    for side, other, ids in ((fa, fb, a), (fb, fa, b)):
        if side.node in d.vouched:
            assert side.disk is DiskState.OUTDATED and other.vouches_for_peer
            assert ids.current == (b if ids is a else a).current and not ids.is_fresh
    plain = decide_sync(a, b, replace(fa, vouches_for_peer=False), replace(fb, vouches_for_peer=False),
                        policy)
    if not d.vouched:
        assert d == plain
    for side in (fa, fb):
        if side.node in d.vouched:  # it receives nothing: UpToDate before any resync
            assert not (d.outcome.is_target if side is fa else d.outcome.is_source)
    if DiskState.UP_TO_DATE in (fa.disk, fb.disk) and fa.vouches_for_peer != fb.vouches_for_peer:
        voucher = fa if fa.vouches_for_peer else fb
        if voucher.disk is DiskState.UP_TO_DATE:  # a stale mark changes nothing (review 26)
            assert d == plain and not d.vouched


def test_two_outdated_disks_on_the_same_data_are_up_to_date_by_a_vouch() -> None:
    """Simulation seed 911631: no UpToDate side, so no rule made either UpToDate."""
    out1 = SyncFlags(node="node1", disk=DiskState.OUTDATED, vouches_for_peer=True)
    out2 = SyncFlags(node="node2", disk=DiskState.OUTDATED)
    d = decide_sync(GenerationIds(5), GenerationIds(5), out1, out2)
    assert d.outcome is Out.NO_SYNC and d.same_data and d.vouched == ("node2",)
    assert genid.disk_after_connect(d.same_data, DiskState.OUTDATED, DiskState.UP_TO_DATE) \
        is DiskState.UP_TO_DATE  # the voucher, next to the peer it made UpToDate
    plain = decide_sync(GenerationIds(5), GenerationIds(5), replace(out1, vouches_for_peer=False), out2)
    assert plain.same_data and plain.vouched == ()


@pytest.mark.parametrize("case", ["voucher UpToDate", "both vouch", "vouched crashed as Primary"])
def test_no_vouch_from_a_stale_mark(case: str) -> None:
    """Review 26: node1's disk failed while node2 had every write (node1's mark), node1
    was resynced UpToDate, node2 was promoted on the same generation, and node2's disk
    failed as Primary: its activity-log blocks may lack writes node1 has. node2 comes
    back Outdated and a crashed Primary. A vouch from node1's stale mark made node2 the
    source of those blocks; none may apply, and node1 stays the source."""
    node1 = SyncFlags(node="node1", disk=DiskState.UP_TO_DATE, vouches_for_peer=True)
    node2 = SyncFlags(node="node2", disk=DiskState.OUTDATED, crashed_primary=True, bitmap_weight=4)
    if case == "voucher UpToDate":
        node2 = replace(node2, crashed_primary=False)
    elif case == "both vouch":  # node1 was recorded Outdated after node2's failure
        node1 = replace(node1, disk=DiskState.OUTDATED)
        node2 = replace(node2, crashed_primary=False, vouches_for_peer=True)
    else:
        node1 = replace(node1, disk=DiskState.OUTDATED)
    d = decide_sync(GenerationIds(5), GenerationIds(5), node1, node2)
    assert d.vouched == ()
    if case == "voucher UpToDate":
        assert d.outcome is Out.SOURCE_BITMAP, d


def test_the_vouched_disk_is_the_source_of_the_vouchers_marked_blocks() -> None:
    """The voucher's disk failed: its activity-log extents are marked, and may hold
    older data than the peer's. With both Outdated the rule for blocks marked by a
    verify picked the greater name (node2, the voucher here); the disk vouched for
    has every write, so it is the source."""
    voucher = SyncFlags(node="node2", disk=DiskState.OUTDATED, vouches_for_peer=True, bitmap_weight=3)
    other = SyncFlags(node="node1", disk=DiskState.OUTDATED)
    d = decide_sync(GenerationIds(5), GenerationIds(5), other, voucher)
    assert d.outcome is Out.SOURCE_BITMAP and d.vouched == ("node1",)
    plain = decide_sync(GenerationIds(5), GenerationIds(5), other, replace(voucher, vouches_for_peer=False))
    assert plain.outcome is Out.TARGET_BITMAP


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from("ab"), max_size=6))
def test_disconnected_writers_model(writers: list[str]) -> None:
    """Whoever wrote while apart is the source; both wrote -> split brain."""
    ids = {"a": GenerationIds(100), "b": GenerationIds(100)}
    fresh = itertools.count(1000)
    for who in writers:
        ids[who] = genid.new_current(ids[who], next(fresh))
    outcome = decide(ids["a"], ids["b"])
    wrote = set(writers)
    if not wrote:
        assert outcome is Out.NO_SYNC
    elif wrote == {"a"}:
        assert outcome is Out.SOURCE_BITMAP
    elif wrote == {"b"}:
        assert outcome is Out.TARGET_BITMAP
    else:
        d = decide_sync(ids["a"], ids["b"], A, B)
        assert d.outcome is Out.SPLIT_BRAIN and d.bitmap_repairable


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "lost-a", "lost-b"]), max_size=5))
def test_lost_resync_starts_change_nothing(actions: list[str]) -> None:
    """Writers apart, plus starts of resync as source that never reached the peer:
    the outcome is the one the writes alone call for."""
    ids = {"a": GenerationIds(100), "b": GenerationIds(100)}
    fresh = itertools.count(1000)
    wrote = set()
    for act in actions:
        who = act[-1]
        if act.startswith("lost-"):
            if ids[who].bitmap:
                ids[who] = genid.start_resync_source(ids[who], next(fresh))
        else:
            ids[who] = genid.new_current(ids[who], next(fresh))
            wrote.add(who)
    d = decide_sync(ids["a"], ids["b"], A, B)
    assert decide_sync(ids["b"], ids["a"], B, A).outcome is d.outcome.mirror()
    if not wrote:
        assert d.outcome is Out.NO_SYNC
    elif wrote == {"a"}:
        assert d.outcome is Out.SOURCE_BITMAP
    elif wrote == {"b"}:
        assert d.outcome is Out.TARGET_BITMAP
    else:
        assert d.outcome is Out.SPLIT_BRAIN and d.bitmap_repairable


@settings(max_examples=400, deadline=None)
@given(flags("node1"), flags("node2"), st.sampled_from(SplitBrainPolicy))
def test_policy_discards_the_side_its_rule_names(fa: SyncFlags, fb: SyncFlags,
                                                 policy: SplitBrainPolicy) -> None:
    """A bitmap-repairable split brain: a policy resolves it only by its own rule,
    both sides agree on the victim, and the resync never widens to a full sync."""
    if DiskState.INCONSISTENT in (fa.disk, fb.disk):
        return  # an Inconsistent side is a plain full-sync target, not a split brain
    ours = decide_sync(SB_A, SB_B, fa, fb, policy)
    theirs = decide_sync(SB_B, SB_A, fb, fa, policy)
    assert theirs.outcome is ours.outcome.mirror()
    assert ours.split_brain_resolved == theirs.split_brain_resolved
    if ours.outcome is Out.SPLIT_BRAIN:
        assert not ours.split_brain_resolved
        return
    assert ours.split_brain_resolved and not ours.outcome.is_full
    victim, keeper = (fb, fa) if ours.outcome.is_source else (fa, fb)
    if victim.discard_my_data != keeper.discard_my_data:
        assert victim.discard_my_data  # the manual flag wins over any policy
    elif policy is SplitBrainPolicy.DISCARD_ZERO_CHANGES:
        assert victim.bitmap_weight == 0
    elif policy is SplitBrainPolicy.DISCARD_SECONDARY:
        assert victim.role is Role.SECONDARY and keeper.role is Role.PRIMARY
    elif policy is SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY:
        # the strongest evidence that differs decides: Outdated, epochs, the mark, the role
        outdated = (victim.disk is DiskState.OUTDATED, keeper.disk is DiskState.OUTDATED)
        epochs = (victim.primary_epoch, keeper.primary_epoch)
        if outdated[0] != outdated[1]:
            assert outdated == (True, False)
        elif all(epochs) and epochs[0] != epochs[1]:
            assert epochs[0] < epochs[1]
        elif victim.lost_leadership == keeper.lost_leadership:  # then the current Primary wins
            assert victim.role is Role.SECONDARY and keeper.role is Role.PRIMARY
        else:
            assert victim.lost_leadership and not keeper.lost_leadership
    else:
        pytest.fail(f"{policy} resolved a split brain: {ours}")


@pytest.mark.parametrize("full", [False, True])
def test_an_outdated_side_ahead_of_an_up_to_date_peer_is_the_target(full):
    """Torture 193:37: the side with the newer generation is Outdated (it adopted its
    successor's fence; what it wrote since was never acknowledged), the other is
    UpToDate: the UpToDate side is the source, never the Outdated one (which made
    both disks Outdated)."""
    common = GenerationIds(current=5, bitmap=0, history=(3,))
    if full:  # the bitmap does not reach back: the common generation is in history
        ahead = GenerationIds(current=9, bitmap=8, history=(5, 3))
    else:
        ahead = GenerationIds(current=9, bitmap=5, history=(3,))
    outdated = SyncFlags(node="node1", disk=DiskState.OUTDATED, bitmap_weight=2)
    up = SyncFlags(node="node2", disk=DiskState.UP_TO_DATE)
    d = decide_sync(ahead, common, outdated, up)
    assert d.outcome is (SyncOutcome.TARGET_FULL if full else SyncOutcome.TARGET_BITMAP), d
    assert d.outdated_discarded, "logged as a discard (replicator._log_split_brain_resolved)"
    assert decide_sync(common, ahead, up, outdated).outcome is d.outcome.mirror()
    # Both UpToDate (or the ahead side UpToDate): the newer generation is the source.
    d2 = decide_sync(ahead, common, SyncFlags(node="node1"), up)
    assert d2.outcome is (SyncOutcome.SOURCE_FULL if full else SyncOutcome.SOURCE_BITMAP), d2
    assert not d2.outdated_discarded
    # Both Outdated: no UpToDate side to prefer; by generation, as before.
    both = SyncFlags(node="node2", disk=DiskState.OUTDATED)
    assert decide_sync(ahead, common, outdated, both).outcome.is_source
