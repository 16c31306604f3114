"""The HA decision core: one cluster snapshot and the node's own state in, one
action and the sentence that explains it out (after Patroni's ``_run_cycle``).

Sans-IO: no DCS, clock, resource or sleep in here; the caller passes `now`
(monotonic) and carries the decision out. Read :func:`decide` top to bottom:
it is the decision table, a flat list of early-return guards followed by one
fork on who holds the leader key. The branches are small functions, one
concern each.

Safety rules it keeps (and ``tests/cluster_decide`` checks for every input):

- only the key holder leads (PROMOTE/LEAD), and only within its lease deadline
  minus a margin; past it, a holder always demotes (except in maintenance,
  where the operator owns the resources, as in Pacemaker and Patroni's pause);
- a node races for the key only when the key is free, and takes it over from
  a living key only with a fence confirmed for exactly that key;
- a node whose disk is not UpToDate, locally or per the DCS, never seeks or
  keeps leadership; nor does an unhealthy, nofailover or standby node seek it.

What the driver owes it: call decide() at least every renewal interval and
also at ``lease_deadline - margin`` even while a DCS call is still pending
(never only after an awaited call returns), and carry out DEMOTE within the
margin. With TTL 1 s, keepalives every 0.25 s and a 0.5 s operation timeout,
a margin of 0.3 s leaves at least 0.3 s between the demotion and the earliest
moment the key can vanish (keepalive sent + TTL, see ``tandem.dcs.base.Renewal``).
"""

from __future__ import annotations

from tandem.cluster.view import Action, Decision, LocalState
from tandem.dcs.view import ClusterView, Leader, VolumeState
from tandem.volume.states import LINK_UP, DiskState


def decide(view: ClusterView, local: LocalState, now: float) -> Decision:
    """What this node does now, and why."""
    me = local.node
    holds_key = view.is_leader(me)
    if view.maintenance:
        return Decision(Action.NOTHING, "maintenance mode is on: leaving resources and keys alone")
    if (local.is_primary or holds_key) and local.deadline_passed(now):
        return Decision(Action.DEMOTE, _deadline_sentence(local, now))
    if not local.dcs_ok:
        if local.is_primary:
            left = local.lease_deadline - local.margin - now  # type: ignore[operator]
            return Decision(Action.LEAD, f"the DCS is unreachable: keeping resources for at most"
                                         f" {left:.2f} s more, until the lease deadline minus margin")
        return Decision(Action.FOLLOW, "the DCS is unreachable: staying secondary")
    if view.leader is None:
        return _no_leader(view, local)
    if holds_key:
        return _as_leader(view, local, view.leader)
    return _as_follower(view, local, view.leader)


# --- eligibility ---------------------------------------------------------------------
def fence_to_adopt(volume: dict | None, record: VolumeState | None, node: str, primary: bool,
                   rev_linked: int) -> tuple[int, bool]:
    """Whether the leader fenced this node since its replication link was last up:
    the DCS records its disk Outdated while its volume daemon, cut off, still says
    UpToDate, so the agent must mark the disk Outdated itself (DRBD's outdate-peer
    does this on the peer; torture 36:25 refilled a failed Primary disk from such a
    node and lost 828 acknowledged writes).

    Only a record written since the link was last up counts (`rev_linked`, the
    record's revision then; -1 if never seen): an Outdated left from an earlier
    fence, not yet rewritten after the resync, says nothing about the disk now.
    A record that calls this node Outdated while its link still looks up does not
    move `rev_linked`: the leader's volume can notice a cut (and fence) before this
    one's ping timeout does, and taking that fence's revision as "seen with the link
    up" made the agent never adopt it (a lab test saw the disk stay UpToDate). At
    worst an Outdated from before the last resync is adopted after the next drop,
    when the leader fences anew anyway.
    Returns the new `rev_linked` and whether to outdate the disk."""
    revision = record.revision if record else 0
    v = volume or {}
    if (v.get("peer") or {}).get("connection") in LINK_UP:
        if record is not None and record.disk(node) is DiskState.OUTDATED:
            return rev_linked, False
        return revision, False
    adopt = (not primary and v.get("role") == "Secondary" and v.get("disk") == "UpToDate"
             and record is not None and record.disk(node) is DiskState.OUTDATED
             and revision > rev_linked)
    return rev_linked, adopt


#: A fence this agent adopted: the record's revision, and the mark of the volume's
#: outdate (its metadata's sequence number then: Replicator.undo_outdate).
Adoption = tuple[int, object]


def adoption_to_undo(adopted: Adoption | None, volume: dict | None, record: VolumeState | None,
                     node: str) -> tuple[Adoption | None, bool]:
    """Whether to make a disk this agent outdated (fence_to_adopt) UpToDate again:
    a newer record calls it UpToDate, and it is still the Outdated Secondary the
    agent left. The stale fence of a resync source whose unfence was delayed (cut
    off from the DCS) and whose own disk failed next: the peer, with every write,
    adopted the fence moments before the unfence landed, and both disks stayed
    Outdated for good (simulation seeds 5236, 6898, 107079).

    Why it is safe: a record calls a node UpToDate only from a writer that saw it
    have every write. The leader writes that only while connected and in sync
    (leader_volume_record); an unfence is a compare-and-set on the record it read
    and the leader key, sent after its in-sync check. A write acknowledged without
    this node needs a fence first, with a newer revision (with fence_peer = "dcs";
    the agent does not undo otherwise), which the agent adopts again. The disk has
    lost nothing since: the volume undoes only with no link and its metadata
    unchanged since the outdate, and never past the request's deadline (a request
    held in a paused daemon's socket, review 25). Only an Outdated the agent's own
    outdate made is undone, not an operator's; an agent restart forgets it.
    Returns the adoption to keep (None: forget it) and whether to undo it now."""
    if adopted is None or not volume:
        return adopted, False
    if volume.get("disk") != "Outdated":
        return None, False  # resynced, attached, promoted by force: nothing to undo
    revision = record.revision if record else 0
    undo = (volume.get("role") == "Secondary" and record is not None and revision > adopted[0]
            and record.disk(node) is DiskState.UP_TO_DATE
            and (volume.get("peer") or {}).get("connection") not in LINK_UP)
    return adopted, undo


def leader_volume_record(volume: dict | None, record: VolumeState | None, resource: str, node: str,
                         peer: str) -> VolumeState | None:
    """What the leader records of the volume: itself UpToDate, the peer UpToDate only
    while connected and in sync, else Outdated (an Outdated or worse record of the
    peer is kept). None when nothing may be recorded: without a status of the local
    volume (the daemon slow or paused), the leader knows neither its own disk (a
    resync may have made it a target since the decision) nor the peer's, and calling
    an in-sync peer Outdated makes it outdate its complete disk once the leader dies
    (fence_to_adopt): no node could be promoted without an operator."""
    if not volume or volume.get("disk") != "UpToDate":
        return None
    peer_link = volume.get("peer") or {}
    peer_ok = peer_link.get("connection") == "Connected" and peer_link.get("disk") == "UpToDate"
    current = record or VolumeState.empty(resource)
    was = current.disk(peer)
    return current.with_disk(node, DiskState.UP_TO_DATE).with_disk(
        peer, DiskState.UP_TO_DATE if peer_ok else
        (was if was not in (None, DiskState.UP_TO_DATE) else DiskState.OUTDATED))


def record_write_needed(want: VolumeState, current: VolumeState, peer: str, promoting: bool) -> bool:
    """Whether the leader writes `want` (from leader_volume_record) over `current`: when
    it differs, and, before a promotion on "peer Outdated", always. That promotion skips
    fencing the peer, so the record must not change behind it: written again, its new
    revision makes every older compare-and-set fail, also a request applied after its
    answer was lost (our own earlier record write, an unfence-peer of either daemon),
    just as a fence always writes (DCS.mark_peer_outdated; review 24)."""
    if want.disks != current.disks:
        return True
    return promoting and want.disk(peer) is not DiskState.UP_TO_DATE


def start_failure_excuse(volume: dict | None, lease_left: float | None) -> str:
    """Why a resource group that failed to start is not this node's fault (empty if it
    is): the volume refused for its own state, or for the leader key's lease. A fault
    costs the node a health penalty, out of the race for the key for a while.

    `volume`: its status read after the failure; `lease_left`: what the key's lease
    still vouches for, less the margin (None: no lease). The volume refuses the
    agent's promotion once the write lease it pushed has run out (an agent paused
    between the two, simulation seed 518200). Counted as a failure, that left the only
    UpToDate node unhealthy while the record kept its peer Outdated: no writer until
    the penalty was served (simulation seed 1007364)."""
    if lease_left is None or lease_left <= 0:
        return "the leader key's lease ran out before the volume took the promotion"
    v = volume or {}
    peer = v.get("peer") or {}
    if v and v.get("disk") != "UpToDate":
        return f"local disk is {v.get('disk')}"
    if peer.get("connection") in ("SyncTarget", "WFBitMapT"):
        return "this node is a resync target"
    if peer.get("connection") == "Connected" and peer.get("role") == "Primary":
        # The old leader's volume is still Primary (its agent frozen: its write
        # lease holds the I/O): it demotes when that agent runs again or the node
        # is fenced. Not a fault of this node (torture 15:41 counted 5 in 5 s).
        return "the peer's volume is still Primary"
    return ""


def disk_problems(view: ClusterView, local: LocalState) -> list[str]:
    """Why this node's data may not be served as primary; empty if it may."""
    why = [] if local.disk_state is DiskState.UP_TO_DATE else [f"its disk is {local.disk_state or 'unknown'}"]
    return why + [f"the DCS records {w}" for w in view.not_up_to_date(local.node)]


def why_not_eligible(view: ClusterView, local: LocalState) -> list[str]:
    """Why this node may not become leader; empty if it may."""
    why = [] if local.healthy else ["it is not healthy"]
    why += disk_problems(view, local)
    member = view.member(local.node)
    if local.nofailover or (member is not None and member.nofailover):
        why.append("nofailover is set")
    if view.is_standby(local.node):
        why.append("it is in standby")
    return why


def peer_is_eligible(view: ClusterView, node: str) -> bool:
    """Whether `node` could take over, judged from its member key and the volume records."""
    m = view.member(node)
    return (m is not None and m.healthy and not m.nofailover and not view.is_standby(node)
            and m.disk_state is DiskState.UP_TO_DATE and view.up_to_date_everywhere(node))


def _successor(view: ClusterView, me: str) -> str | None:
    """The eligible peer to hand over to (the first by name: deterministic)."""
    return next((m.node for m in view.members if m.node != me and peer_is_eligible(view, m.node)), None)


# --- the fork ------------------------------------------------------------------------
def _no_leader(view: ClusterView, local: LocalState) -> Decision:
    why = why_not_eligible(view, local)
    if why:
        if local.is_primary:
            return Decision(Action.DEMOTE, f"demoting: nobody holds the leader key and this node may not"
                                           f" take it because {_and(why)}")
        return Decision(Action.FOLLOW, f"staying secondary: nobody holds the leader key but this node"
                                       f" may not take it because {_and(why)}")
    wanted = view.switchover.candidate if view.switchover else None
    if wanted and wanted != local.node and peer_is_eligible(view, wanted):
        return Decision(Action.FOLLOW, f"staying secondary: the operator asked for {wanted} to take"
                                       f" over and it is eligible", target=wanted)
    verb = "keeping the primary role" if local.is_primary else "promoting"
    return Decision(Action.ACQUIRE, f"racing for the free leader key (epoch {view.epoch + 1}), then"
                                    f" {verb}: this node is healthy and its disk is UpToDate")


def _as_leader(view: ClusterView, local: LocalState, leader: Leader) -> Decision:
    me = local.node
    successor = _successor(view, me)
    disk_bad = disk_problems(view, local)
    if local.disk_state is not None and not local.disk_state.has_disk:
        # Nothing to flush and no clean stop to wait for (MariaDB hangs on a dead
        # disk): stop at once and free the key for the peer (torture 41:27).
        return Decision(Action.DEMOTE, f"demoting at once from epoch {leader.epoch}: {_and(disk_bad)}",
                        target=successor)
    if disk_bad:
        return Decision(Action.STEP_DOWN, f"stepping down from epoch {leader.epoch}: {_and(disk_bad)}",
                        target=successor)
    if not local.healthy and successor:
        return Decision(Action.STEP_DOWN, f"stepping down from epoch {leader.epoch}: resources are"
                                          f" unhealthy and {successor} can take over", target=successor)
    if view.is_standby(me):
        tail = f"handing over to {successor}" if successor else "no eligible peer: the service stops"
        return Decision(Action.STEP_DOWN, f"stepping down: this node is in standby, {tail}", target=successor)
    sw = view.switchover
    if sw is not None and sw.leader in (me, None) and sw.candidate != me:
        target = sw.candidate or successor
        if target and peer_is_eligible(view, target):
            return Decision(Action.STEP_DOWN, f"stepping down for the requested switchover to {target}",
                            target=target)
        return _lead(view, local, leader, f"ignoring the switchover request: "
                     f"{(target + ' is') if target else 'no peer is'} not eligible", clear=True)
    stale = sw is not None and (sw.leader not in (me, None) or sw.candidate == me)
    if not local.healthy:
        return _lead(view, local, leader, "resources are unhealthy and no peer can take over", clear=stale)
    return _lead(view, local, leader, "", clear=stale)


def _lead(view: ClusterView, local: LocalState, leader: Leader, note: str, clear: bool) -> Decision:
    tail = f" ({note})" if note else ""
    if not local.is_primary:
        return Decision(Action.PROMOTE, f"holding the leader key (epoch {leader.epoch}): starting the"
                                        f" resource group{tail}", clear_switchover=clear)
    return Decision(Action.LEAD, f"holding the leader key (epoch {leader.epoch}): renewing the lease and"
                                 f" keeping resources started{tail}", clear_switchover=clear)


def _as_follower(view: ClusterView, local: LocalState, leader: Leader) -> Decision:
    other = leader.node
    if local.is_primary:
        return Decision(Action.DEMOTE, f"demoting: {other} holds the leader key (epoch {leader.epoch})")
    why = why_not_eligible(view, local)
    if local.fenced_token == leader.revision:
        if why:
            return Decision(Action.FOLLOW, f"staying secondary: {other} is fenced but this node may not"
                                           f" take over because {_and(why)}")
        return Decision(Action.FENCED_TAKEOVER, f"taking over from {other} without waiting for its lease:"
                                                f" the fencing agent confirmed it is off", target=other)
    if local.leader_unreachable and local.fencing and not why:
        return Decision(Action.FENCE_LEADER, f"fencing {other}: it holds the leader key (epoch"
                                             f" {leader.epoch}) but looks dead", target=other)
    return Decision(Action.FOLLOW, f"following {other} (epoch {leader.epoch}) as secondary")


# --- sentences -----------------------------------------------------------------------
def _deadline_sentence(local: LocalState, now: float) -> str:
    if local.lease_deadline is None:
        return "demoting: this node writes or holds the key without a lease it has renewed"
    late = now - (local.lease_deadline - local.margin)
    return (f"demoting: the lease could not be renewed and its deadline minus the {local.margin:.2f} s"
            f" margin passed {late:.2f} s ago")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
