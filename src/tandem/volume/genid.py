"""Generation identifiers: who has the newer data, and is a bitmap resync enough?

Each node keeps three kinds of 64-bit identifiers (after DRBD's "UUIDs"):

* ``current`` names the data generation on this disk now. A fresh, never
  synced disk has ``current == 0``.
* ``bitmap`` names the generation at which this node started recording writes
  in its dirty bitmap because the peer was away (0 = the bitmap is not in use).
  Everything written since that generation is marked in the bitmap, so a peer
  whose ``current`` equals our ``bitmap`` can catch up with a bitmap resync.
* ``history`` holds older generations (newest first) so that two nodes whose
  bitmaps are useless can still tell "related but far apart" (full resync)
  from "different data sets" (refuse).

Random identifiers are drawn by the caller (no randomness in here) and must
never be 0, which means "none".

The decision at connect time, :func:`decide_sync`, is pure and symmetric: with
the inputs swapped it returns the mirrored outcome, so both nodes reach the same
conclusion independently. A start of resync that one side recorded as source and
the other never heard of is undone in the comparison first (the sync identifier
is derived from the old bitmap identifier to make that recognisable). The rules,
in order:

1. A side without a disk cannot take part: no sync.
2. Both fresh (current 0): the UpToDate one (made so by a forced promotion) is
   the source of a full sync; if neither or both are, nothing happens.
3. One side fresh: full sync from the other.
4. Same current: no sync, unless one side crashed as Primary (its activity
   log extents are in its bitmap: bitmap resync from it) or one side is
   Inconsistent (full sync from the consistent one). An Outdated side the
   other vouches for counts as UpToDate (:func:`apply_vouches`).
5. Peer's bitmap == our current: the peer wrote since our generation, we are
   the bitmap-sync target; the mirror case makes us the source.
6. Our current in the peer's history: the peer is ahead but its bitmap does
   not reach back to us: full sync target (and the mirror case).
7. Same bitmap, different current: both wrote since the common generation,
   split brain; a bitmap resync can repair it once a policy picks a victim.
8. A common generation anywhere in the histories: split brain that only a full
   sync can repair, only by manual ``discard-my-data``.
9. Otherwise the data sets are unrelated: refuse.

Split brain is never merged: either a policy from :class:`SplitBrainPolicy`
or the manual discard-my-data flag picks the side whose changes are thrown
away, or the connection is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from tandem.volume.states import DiskState, Role

HISTORY_LEN = 4
"""How many older generations a node remembers."""

_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class GenerationIds:
    """The generation identifiers of one disk (see the module docstring)."""

    current: int = 0
    bitmap: int = 0
    history: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for value in (self.current, self.bitmap, *self.history):
            if not 0 <= value <= _U64:
                raise ValueError(f"generation identifier {value!r} is not a u64")
        if len(self.history) > HISTORY_LEN:
            raise ValueError(f"at most {HISTORY_LEN} history entries, got {len(self.history)}")

    @property
    def is_fresh(self) -> bool:
        """True for a disk that never held a generation of data."""
        return self.current == 0


def _push(history: tuple[int, ...], value: int) -> tuple[int, ...]:
    if value == 0:
        return history
    return (value, *history)[:HISTORY_LEN]


def _check_new(uuid: int) -> None:
    if not 0 < uuid <= _U64:
        raise ValueError("a new generation identifier must be a non-zero u64")


def new_current(ids: GenerationIds, uuid: int) -> GenerationIds:
    """Start a new generation: a Primary is about to write without its peer.

    The old current becomes the bitmap identifier, so the peer (still at the
    old current) can later be caught up with a bitmap resync. If the bitmap is
    already in use, it keeps its older base (the bitmap still holds every
    change since then) and the old current goes to the history instead.
    """
    _check_new(uuid)
    if ids.bitmap == 0:
        return GenerationIds(uuid, ids.current, ids.history)
    return GenerationIds(uuid, ids.bitmap, _push(ids.history, ids.current))


def sync_uuid_from(base: int) -> int:
    """The identifier a sync source derives from its old bitmap identifier.

    Derived, not random, so that a sync source whose start of resync never
    reached the target (the link broke between the source persisting it and the
    target adopting it) can be recognised at the next connect and the start
    undone in the comparison (DRBD does the same with its UUID offset): else the
    two sides look like a split brain with only a common ancestor, which no
    policy may resolve (torture 57:30: an automatically resolved split brain
    became a StandAlone one after the link broke at the start of the resync).
    """
    x = (base ^ 0x9E3779B97F4A7C15) & _U64  # splitmix64 finaliser: any base maps far away
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
    return (x ^ (x >> 31)) or 1


def start_resync_source(ids: GenerationIds, fresh_uuid: int) -> GenerationIds:
    """The sync source marks the start of a resync with a new bitmap identifier.

    The target adopts it as its current (see :func:`start_resync_target`);
    should the resync be interrupted, the next connect finds source.bitmap ==
    target.current and resumes with a bitmap resync instead of starting over
    (the target keeps its merged bitmap). The identifier is derived from the old
    bitmap identifier when there is one (see :func:`sync_uuid_from`), else it is
    ``fresh_uuid``.
    """
    _check_new(fresh_uuid)
    sync_uuid = sync_uuid_from(ids.bitmap) if ids.bitmap else fresh_uuid
    return GenerationIds(ids.current, sync_uuid, _push(ids.history, ids.bitmap))


def _unseen_resync_start_undone(ids: GenerationIds, other: GenerationIds) -> GenerationIds:
    """``ids`` as they were before starts of resync (as source) that ``other``,
    the would-be target, never heard of.

    Such a start only replaced the bitmap identifier: the bitmap itself still
    holds every block written since the old one (the target requests blocks,
    and clears them on the source, only after adopting the new identifier).
    """
    seen = {other.current, other.bitmap, *other.history}
    for _ in range(HISTORY_LEN):
        if ids.bitmap == 0 or ids.bitmap in seen:
            break
        base = next((h for h in ids.history if sync_uuid_from(h) == ids.bitmap), None)
        if base is None:
            break
        rest = list(ids.history)
        rest.remove(base)
        ids = GenerationIds(ids.current, base, tuple(rest))
    return ids


def start_resync_target(ids: GenerationIds, sync_uuid: int) -> GenerationIds:
    """The sync target adopts the source's sync identifier (see above)."""
    _check_new(sync_uuid)
    return GenerationIds(sync_uuid, 0, _push(ids.history, ids.current))


def finish_resync_source(ids: GenerationIds) -> GenerationIds:
    """Resync done on the source: the bitmap is empty, forget its identifier."""
    return GenerationIds(ids.current, 0, _push(ids.history, ids.bitmap))


def finish_resync_target(ids: GenerationIds, source_current: int) -> GenerationIds:
    """Resync done on the target: it now holds the source's generation."""
    _check_new(source_current)
    return GenerationIds(source_current, 0, _push(ids.history, ids.current))


def disk_after_resync(source_disk: DiskState) -> DiskState:
    """A resync copies the source's data, and no more: the target is UpToDate only
    when the source was. An Outdated source (fenced, or itself filled from an
    Outdated disk) leaves the target Outdated, so neither can be promoted without
    force: the newest writes exist nowhere the cluster can see (torture 25:15, the
    last UpToDate disk failed and was replaced while its peer was fenced; the new
    disk was filled from the Outdated peer, called UpToDate, and promoted)."""
    return DiskState.UP_TO_DATE if source_disk is DiskState.UP_TO_DATE else DiskState.OUTDATED


def disk_after_connect(same_data: bool, local_disk: DiskState, peer_disk: DiskState) -> DiskState:
    """An Outdated disk that connects to an UpToDate peer holding the same data is
    UpToDate: nothing is missing. Without this, a disk outdated by a fence whose
    Primary then wrote nothing (or outdated just as the link came back) stayed
    Outdated for good, and its node was never eligible again (DRBD upgrades it the
    same way). Any other case keeps the local disk state."""
    if same_data and local_disk is DiskState.OUTDATED and peer_disk is DiskState.UP_TO_DATE:
        return DiskState.UP_TO_DATE
    return local_disk


class SyncOutcome(StrEnum):
    """What to do with a freshly connected peer."""

    NO_SYNC = "NoSync"
    SOURCE_BITMAP = "SourceBitmap"
    TARGET_BITMAP = "TargetBitmap"
    SOURCE_FULL = "SourceFull"
    TARGET_FULL = "TargetFull"
    SPLIT_BRAIN = "SplitBrain"
    UNRELATED = "Unrelated"

    def mirror(self) -> SyncOutcome:
        """The outcome the peer computes from the same facts."""
        return _MIRROR.get(self, self)

    @property
    def is_source(self) -> bool:
        return self in (SyncOutcome.SOURCE_BITMAP, SyncOutcome.SOURCE_FULL)

    @property
    def is_target(self) -> bool:
        return self in (SyncOutcome.TARGET_BITMAP, SyncOutcome.TARGET_FULL)

    @property
    def is_full(self) -> bool:
        return self in (SyncOutcome.SOURCE_FULL, SyncOutcome.TARGET_FULL)

    @property
    def refused(self) -> bool:
        """True if the connection must not proceed (go StandAlone)."""
        return self in (SyncOutcome.SPLIT_BRAIN, SyncOutcome.UNRELATED)


_MIRROR = {
    SyncOutcome.SOURCE_BITMAP: SyncOutcome.TARGET_BITMAP,
    SyncOutcome.TARGET_BITMAP: SyncOutcome.SOURCE_BITMAP,
    SyncOutcome.SOURCE_FULL: SyncOutcome.TARGET_FULL,
    SyncOutcome.TARGET_FULL: SyncOutcome.SOURCE_FULL,
}


class SplitBrainPolicy(StrEnum):
    """Automatic split-brain recovery (both nodes must use the same policy)."""

    DISCONNECT = "disconnect"  #: never resolve automatically
    DISCARD_ZERO_CHANGES = "discard-zero-changes"
    DISCARD_SECONDARY = "discard-secondary"
    DISCARD_LEAST_RECENT_PRIMARY = "discard-least-recent-primary"


@dataclass(frozen=True, slots=True)
class SyncFlags:
    """The facts about one side besides its identifiers.

    ``node`` breaks ties deterministically (names differ; the handshake
    refuses a peer with our own name). ``bitmap_weight`` is the number of dirty
    blocks, i.e. the changes made while disconnected. ``lost_leadership`` is
    set by the agent on the node that was Primary less recently (it lost the
    leader key to the other); it lives in memory only, so a restart forgets it.
    ``primary_epoch`` is the cluster's leader epoch of the node's latest
    promotion, kept in its metadata (0: never promoted by the agent).
    """

    node: str
    disk: DiskState = DiskState.UP_TO_DATE
    role: Role = Role.SECONDARY
    crashed_primary: bool = False
    discard_my_data: bool = False
    lost_leadership: bool = False
    primary_epoch: int = 0
    bitmap_weight: int = 0
    #: this side's disk failed while the other took every write, and this side has
    #: not been Primary since (MetaState.peer_had_all): see apply_vouches
    vouches_for_peer: bool = False


@dataclass(frozen=True, slots=True)
class SyncDecision:
    """An outcome and the rule that produced it (the log line)."""

    outcome: SyncOutcome
    reason: str
    #: for SPLIT_BRAIN: True if a bitmap resync can repair it once a victim is chosen
    bitmap_repairable: bool = field(default=False, compare=False)
    #: a split brain that discard-my-data or a policy resolved: one side's changes go
    split_brain_resolved: bool = field(default=False, compare=False)
    #: an automatic policy found no victim *now* (both Primary, say): the roles and
    #: flags it reads may change, so the nodes try again later instead of waiting
    #: for an operator
    policy_undecided: bool = field(default=False, compare=False)
    #: NO_SYNC because both sides hold the same data (same generation, nothing
    #: marked out of sync, no crashed Primary's activity log to replay)
    same_data: bool = field(default=False, compare=False)
    #: the side ahead is Outdated: its changes since the common generation go
    #: (see _outdated_ahead), logged like a resolved split brain
    outdated_discarded: bool = field(default=False, compare=False)
    #: the nodes whose Outdated disk is UpToDate by the other side's vouch
    #: (apply_vouches); by name, so the mirrored decision says the same
    vouched: tuple[str, ...] = field(default=(), compare=False)

    def mirror(self) -> SyncDecision:
        return replace(self, outcome=self.outcome.mirror())


def decide_sync(
    local: GenerationIds,
    peer: GenerationIds,
    local_flags: SyncFlags,
    peer_flags: SyncFlags,
    policy: SplitBrainPolicy = SplitBrainPolicy.DISCONNECT,
) -> SyncDecision:
    """Decide the resync direction at connect (rules in the module docstring).

    A split brain is handed to :func:`resolve_split_brain` with ``policy``;
    the result is still SPLIT_BRAIN if nothing resolves it.
    """
    local_flags, peer_flags, vouched = apply_vouches(local, peer, local_flags, peer_flags)
    decision = _compare(local, peer, local_flags, peer_flags)
    if decision.outcome is SyncOutcome.SPLIT_BRAIN:
        return resolve_split_brain(decision, policy, local_flags, peer_flags)
    out = decision.outcome
    # A side that is to receive data is not UpToDate before the resync ends (review 26:
    # the link could drop first); with the rules below a disk vouched for never is.
    vouched = tuple(n for n in vouched if not (n == local_flags.node and out.is_target
                                               or n == peer_flags.node and out.is_source))
    return replace(decision, vouched=vouched) if vouched else decision


def apply_vouches(local: GenerationIds, peer: GenerationIds, lf: SyncFlags,
                  pf: SyncFlags) -> tuple[SyncFlags, SyncFlags, tuple[str, ...]]:
    """An Outdated disk with the same current generation as a peer that vouches for
    it counts as UpToDate; returns the flags to decide on and the names vouched for.

    The voucher's disk failed while this disk took every write (it was linked, in
    sync and UpToDate), and the voucher has not been Primary since: no write was
    acknowledged without this disk. The same current generation says this disk
    wrote nothing alone either (a Primary without its peer starts a new one). So
    the "Outdated" can only be a stale fence, adopted from a record written before
    the voucher's unfence could land (the unfence owed by a failed disk). Without
    this, the two Outdated disks stayed connected on the same data and neither
    could be promoted without force (simulation seeds 332150 and 911631): the
    agent's undo of a stale adoption wants no link, and "same data" upgrades an
    Outdated disk only next to an UpToDate one. The voucher's own disk, Outdated
    since its failure, is then UpToDate too by the usual rules: the same data as
    an UpToDate peer, or its resync target.

    Never when both vouch (each disk failed while the other was in sync: neither
    knows what the other missed since), when the voucher's disk is UpToDate (it
    was in sync again since its failure, so the mark is stale and the usual rules
    apply; the replicator clears it then), or for a side that crashed as Primary
    (its activity log's blocks may lack writes the voucher has; review 26)."""
    if local.is_fresh or peer.is_fresh or local.current != peer.current:
        return lf, pf, ()
    if lf.vouches_for_peer == pf.vouches_for_peer:
        return lf, pf, ()
    voucher, other = (lf, pf) if lf.vouches_for_peer else (pf, lf)
    if (voucher.disk is DiskState.UP_TO_DATE or other.disk is not DiskState.OUTDATED
            or other.crashed_primary):
        return lf, pf, ()
    other = replace(other, disk=DiskState.UP_TO_DATE)
    if other.node == lf.node:
        return other, pf, (other.node,)
    return lf, other, (other.node,)


def _we_win(local_flags: SyncFlags, peer_flags: SyncFlags) -> bool:
    """A symmetric tie-break: the node with the greater name."""
    if local_flags.node == peer_flags.node:
        raise ValueError("both sides have the same node name; cannot break a tie")
    return local_flags.node > peer_flags.node


def _source_if(we_are_source: bool, full: bool, reason: str) -> SyncDecision:
    if full:
        outcome = SyncOutcome.SOURCE_FULL if we_are_source else SyncOutcome.TARGET_FULL
    else:
        outcome = SyncOutcome.SOURCE_BITMAP if we_are_source else SyncOutcome.TARGET_BITMAP
    return SyncDecision(outcome, reason)


def _outdated_ahead(lf: SyncFlags, pf: SyncFlags, we_are_ahead: bool) -> bool:
    """The side with the newer generation is Outdated, the other UpToDate: an Outdated
    disk is never the source of its UpToDate peer. What it wrote since their common
    generation was never acknowledged: a Primary completes a write without its peer
    only after recording the peer Outdated under its leader key, and a record calling
    this side Outdated was written by the peer's leadership, which the peer could
    only take while the record did not call *it* Outdated (or after an unfence, with
    both in sync again). Torture 193:37: the old Primary, cut off with two writes in
    flight and its fence refused, adopted the Outdated its successor recorded before
    a paused volume daemon made that promotion fail; as the source of its newer
    generation it made its UpToDate peer Outdated too, and no disk could be promoted."""
    ahead, behind = (lf, pf) if we_are_ahead else (pf, lf)
    return ahead.disk is DiskState.OUTDATED and behind.disk is DiskState.UP_TO_DATE


def _compare(local: GenerationIds, peer: GenerationIds, lf: SyncFlags, pf: SyncFlags) -> SyncDecision:
    if not (lf.disk.has_disk and pf.disk.has_disk):
        return SyncDecision(SyncOutcome.NO_SYNC, "a side has no usable disk")

    if local.is_fresh and peer.is_fresh:
        ours = lf.disk is DiskState.UP_TO_DATE
        theirs = pf.disk is DiskState.UP_TO_DATE
        if ours != theirs:
            return _source_if(ours, True, "both fresh, initial full sync from the UpToDate side")
        return SyncDecision(SyncOutcome.NO_SYNC, "both fresh; promote one with force to start")
    if local.is_fresh or peer.is_fresh:
        return _source_if(peer.is_fresh, True, "one side fresh, full sync from the other")

    # An Inconsistent disk (invalidated, or a full sync cut short) holds nothing worth
    # keeping whatever its identifiers say: it is a full-sync target of an UpToDate peer,
    # never a split brain (a failed disk an operator invalidated was refused as one).
    if lf.disk.is_consistent != pf.disk.is_consistent:
        source = lf if lf.disk.is_consistent else pf
        if source.disk is DiskState.UP_TO_DATE:
            src, dst = (local, peer) if lf.disk.is_consistent else (peer, local)
            if src.bitmap != 0 and dst.current == src.bitmap:
                # A resync from this source, interrupted: the source's bitmap (what it
                # has not sent, and what was written since) and the target's saved one
                # (what it has not written durably: MetaStore.clear_written) cover
                # every block that differs; no full sync.
                return _source_if(lf.disk.is_consistent, False,
                                  "one side Inconsistent, resuming its interrupted resync")
            return _source_if(lf.disk.is_consistent, True,
                              "one side Inconsistent, full sync from the UpToDate side")

    local, peer = _unseen_resync_start_undone(local, peer), _unseen_resync_start_undone(peer, local)
    if local.current == peer.current:
        ours_ok, theirs_ok = lf.disk.is_consistent, pf.disk.is_consistent
        if ours_ok != theirs_ok:
            return _source_if(ours_ok, True, "same generation, one side inconsistent")
        if {lf.disk, pf.disk} == {DiskState.UP_TO_DATE, DiskState.OUTDATED} and (
                lf.bitmap_weight or pf.bitmap_weight or lf.crashed_primary or pf.crashed_primary):
            # An Outdated disk (fenced, or back from a failure while its peer had every
            # write) is never the source of its UpToDate peer, whatever it marked.
            return _source_if(lf.disk is DiskState.UP_TO_DATE, False,
                              "same generation, blocks to resync from the UpToDate side")
        if lf.crashed_primary != pf.crashed_primary:
            return _source_if(lf.crashed_primary, False, "same generation, crashed primary's AL")
        if lf.crashed_primary:
            return _source_if(_we_win(lf, pf), False, "same generation, both crashed primaries")
        if lf.bitmap_weight or pf.bitmap_weight:
            # Blocks marked out of sync by an online verify: the Primary's copy
            # (or, with none, the larger name's) is the one users have been reading.
            if (lf.role is Role.PRIMARY) != (pf.role is Role.PRIMARY):
                ours = lf.role is Role.PRIMARY
            else:
                ours = _we_win(lf, pf)
            return _source_if(ours, False, "same generation, blocks marked out of sync")
        return SyncDecision(SyncOutcome.NO_SYNC, "same generation", same_data=True)

    peer_ahead = peer.bitmap != 0 and peer.bitmap == local.current
    we_ahead = local.bitmap != 0 and local.bitmap == peer.current
    if peer_ahead != we_ahead:
        if _outdated_ahead(lf, pf, we_ahead):
            return replace(_source_if(not we_ahead, False, "the side that wrote since the other's"
                                      " generation is Outdated: its changes go, resync from the"
                                      " UpToDate side"), outdated_discarded=True)
        return _source_if(we_ahead, False, "one side wrote since the other's generation")

    in_peer_history = local.current in peer.history
    in_our_history = peer.current in local.history
    if not (peer_ahead or we_ahead) and in_peer_history != in_our_history:
        if _outdated_ahead(lf, pf, in_our_history):
            return replace(_source_if(not in_our_history, True, "the side ahead is Outdated: its"
                                      " changes go, full sync from the UpToDate side"),
                           outdated_discarded=True)
        return _source_if(in_our_history, True, "generation in history, bitmap too old")

    if local.bitmap != 0 and local.bitmap == peer.bitmap:
        return SyncDecision(
            SyncOutcome.SPLIT_BRAIN,
            "split brain: both wrote since their common generation",
            bitmap_repairable=True,
        )
    ours = {local.current, local.bitmap, *local.history} - {0}
    theirs = {peer.current, peer.bitmap, *peer.history} - {0}
    if ours & theirs:
        return SyncDecision(
            SyncOutcome.SPLIT_BRAIN, "split brain: diverged generations with a common ancestor"
        )
    return SyncDecision(SyncOutcome.UNRELATED, "unrelated data: no common generation")


def resolve_split_brain(
    decision: SyncDecision,
    policy: SplitBrainPolicy,
    local_flags: SyncFlags,
    peer_flags: SyncFlags,
) -> SyncDecision:
    """Pick the split-brain victim, or keep SPLIT_BRAIN (refuse, go StandAlone).

    The manual discard-my-data flag wins over any policy. Automatic policies
    only apply when the split brain is bitmap-repairable (the two sides share
    the generation their bitmaps start from); otherwise a full sync would
    overwrite a history the policy knows nothing about.
    """
    if decision.outcome is not SyncOutcome.SPLIT_BRAIN:
        return decision
    full = not decision.bitmap_repairable
    mine, theirs = local_flags.discard_my_data, peer_flags.discard_my_data
    if mine != theirs:
        return replace(_source_if(theirs, full, "split brain resolved by discard-my-data"),
                       split_brain_resolved=True)
    if mine:
        return replace(decision, reason="split brain: both sides asked to discard their data")
    if full or policy is SplitBrainPolicy.DISCONNECT:
        return decision
    victim, why = _victim_and_why(policy, local_flags, peer_flags)
    if victim is None:
        return replace(decision, reason=f"{decision.reason}; {policy} cannot decide",
                       policy_undecided=True)
    return replace(_source_if(victim == "peer", False, f"split brain resolved by {policy}: {why}"),
                   split_brain_resolved=True)


def policy_victim(policy: SplitBrainPolicy, lf: SyncFlags, pf: SyncFlags) -> str | None:
    """Return "local" or "peer" for the side whose changes are discarded."""
    return _victim_and_why(policy, lf, pf)[0]


def _victim_and_why(policy: SplitBrainPolicy, lf: SyncFlags, pf: SyncFlags) -> tuple[str | None, str]:
    """The victim and, for the log line, the fact that made it one."""
    if policy is SplitBrainPolicy.DISCARD_ZERO_CHANGES:
        ours, theirs = lf.bitmap_weight == 0, pf.bitmap_weight == 0
        if ours and theirs:
            return ("peer" if _we_win(lf, pf) else "local"), "neither side changed anything"
        if ours != theirs:
            return ("local" if ours else "peer"), f"{(lf if ours else pf).node} changed nothing"
        return None, ""
    if policy is SplitBrainPolicy.DISCARD_SECONDARY:
        ours, theirs = lf.role is Role.SECONDARY, pf.role is Role.SECONDARY
        if ours != theirs:
            return ("local" if ours else "peer"), f"{(lf if ours else pf).node} is Secondary"
        return None, ""
    if policy is SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY:
        return _least_recent_primary(lf, pf)
    return None, ""


def _least_recent_primary(lf: SyncFlags, pf: SyncFlags) -> tuple[str | None, str]:
    """The side that was Primary less recently, from the strongest evidence first.

    1. An Outdated disk: the cluster recorded that it lacks writes the other side
       has, so it is never the side kept.
    2. The lower leader epoch of the latest promotion. Persistent: the node that
       lost the key and crashed before the reconnect has no memory of losing it,
       while the later leader, demoted in turn, remembers (torture 90:37 kept the
       older side that way and discarded 675 acknowledged writes).
    3. The agent's in-memory "lost the leader key" mark, then the current role:
       for nodes without epochs (promoted by hand)."""
    def pick(local_loses: bool, why: Callable[[SyncFlags, SyncFlags], str]) -> tuple[str, str]:
        v, k = (lf, pf) if local_loses else (pf, lf)
        return ("local" if local_loses else "peer"), why(v, k)

    ours, theirs = lf.disk is DiskState.OUTDATED, pf.disk is DiskState.OUTDATED
    if ours != theirs:
        return pick(ours, lambda v, k: f"{v.node}'s disk is Outdated")
    if lf.primary_epoch and pf.primary_epoch and lf.primary_epoch != pf.primary_epoch:
        return pick(lf.primary_epoch < pf.primary_epoch, lambda v, k: (
            f"{v.node} was last promoted at epoch {v.primary_epoch}, {k.node} at {k.primary_epoch}"))
    if lf.lost_leadership != pf.lost_leadership:
        return pick(lf.lost_leadership, lambda v, k: f"{v.node} lost the leader key")
    # Both (or neither) were told they lost leadership: a side that is Primary
    # now is the most recent Primary (under the agent it holds the leader key).
    ours, theirs = lf.role is Role.SECONDARY, pf.role is Role.SECONDARY
    if ours != theirs:
        return pick(ours, lambda v, k: f"{v.node} is Secondary, {k.node} Primary")
    return None, ""
