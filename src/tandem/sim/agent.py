"""The agent, mirroring ``tandem.cluster.agent.Agent`` line for line where it
matters for safety, but on simulated time and calling the REAL ``decide()``.

Two coroutines per agent process, as in the real driver: the lease loop
(renew every TTL/4, push deadline - margin to the volume as its write lease)
and the main loop (wait for a watch wake-up or the interval, capped at the
lease deadline minus margin; then one cycle: load, volume status, decide,
act, publish the member key). The watch task is the world delivering a wake-up
over the node's network for every DCS change. Volume control calls are local and
instant, unless the volume daemon is paused: then they wait, up to the real call's
timeout, and one that times out still runs when the daemon resumes (it waits in
the socket). Resources other than the volume start and stop instantly.

``Variant`` switches break the agent on purpose, so tests can prove the
checker catches it; ``fence_loop`` is the volume's fence-peer hook (the daemon's DCS fencer
or the ``tandem fence-peer`` command: its own DCS session, not paused with the agent).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

from tandem.cluster.decide import (
    Adoption,
    adoption_to_undo,
    decide,
    fence_to_adopt,
    leader_volume_record,
    record_write_needed,
    start_failure_excuse,
)
from tandem.cluster.penalty import FailurePenalty
from tandem.cluster.view import Action, Decision, LocalState
from tandem.dcs.base import DCSError
from tandem.dcs.view import ClusterView, HistoryEntry, Leader, Member, NodeRole, VolumeState
from tandem.sim.dcs import SimDCS
from tandem.sim.kernel import Coro, Process, Sleep, WaitWake
from tandem.volume.states import DiskState, Role

if TYPE_CHECKING:
    from tandem.sim.volume import SimVolume
    from tandem.sim.world import World

RESOURCE = "db"
TTL, OP_TIMEOUT, INTERVAL, MARGIN, MONITOR_INTERVAL = 1.0, 0.5, 0.25, 0.3, 1.0
#: agent.py's control-call timeouts (status, write-lease push, outdate and suspend-io,
#: forced secondary) and VOLUME_STATUS_GRACE (a test keeps them equal)
STATUS_TIMEOUT, LEASE_PUSH_TIMEOUT, CALL_TIMEOUT, FORCE_TIMEOUT, STOP_TIMEOUT = 1.0, 0.5, 1.0, 5.0, 15.0
VOLUME_STATUS_GRACE = 2.5
TIMED_OUT = object()  #: what a control call to a paused volume daemon returns
UNFENCE_ATTEMPTS = 20  #: replicator.UNFENCE_ATTEMPTS (a test keeps them equal)

#: Variants that are not broken but proposed: rules the product does not have yet,
#: tried here first (none now: vouch_at_connect is the product's genid.apply_vouches).
PROPOSALS: tuple[str, ...] = ()
VARIANTS = ("none", "skip_fence", "promote_outdated", "no_margin", "replace_failed_disk",
            "policy_by_memory", "no_unfence", "unfence_as_leader", "no_status_grace", "outdated_source",
            "trust_late_unfence", "keep_stale_adoption", "forget_at_restart", "no_vouch",
            "promote_past_lease", "late_start", "no_late_outdate_adoption", *PROPOSALS)

#: Fixes for bugs this simulation found in the real code (see the README of
#: tests/sim). The world applies all of them unless asked to run the code as is.
FIXES = {
    "clear_hold_on_promote": "volume: the agent's DEMOTE sends suspend-io (io_open cleared,"
                             " _held_by_operator set) and then secondary --force, which returns early on"
                             " a Secondary and never reopens I/O; nothing clears the hold, so the next"
                             " promotion blocks every write (or, after a forced demotion, the next"
                             " successful fence-peer keeps I/O closed): promote() should reopen I/O",
    "no_lease_no_promote": "agent: _promote pushes write lease None (= unlimited) when the lease loop"
                           " has no deadline yet; promote only with an unexpired lease deadline",
    "key_on_my_lease": "agent: a leader key with this node's name on a lease this process does not"
                       " renew (a restarted agent, or two concurrent grants) is adopted as its own;"
                       " release it instead",
    "deadline_of_key_lease": "agent: after its lease expired, the lease loop grants a new lease and"
                             " takes its deadline as the leader's (and pushes it as the write lease)"
                             " although the leader key died with the old lease: a deadline counts for"
                             " leadership only if it is the key's lease",
    "fencing_survives_lease_renewal": "volume: set_write_lease() resumes I/O (io_open) while a"
                                      " fence-peer is still in progress, so writes complete without"
                                      " the peer and without the fence",
}


class SimAgent:
    def __init__(self, world: World, node: str, proc: Process, vol: SimVolume):
        self.world, self.node, self.proc, self.vol = world, node, proc, vol
        self.sim = world.sim
        self.clock = proc.clock
        self.peer = world.peer_of(node)
        self.margin = 0.0 if world.broken("no_margin") else MARGIN
        self.dcs = SimDCS(world.cluster, node, self.clock, ttl=TTL, op_timeout=OP_TIMEOUT)
        self.view = ClusterView.empty(world.cluster)
        self.leader: Leader | None = None
        self.lease_deadline: float | None = None
        self.primary = False
        self.healthy = True
        self.volume: dict | None = None
        self._volume_seen: tuple[dict, float] | None = None  # the last status and when
        self._adopted: Adoption | None = None  # the fence adopted last (adoption_to_undo)
        self._outdate_unanswered: int | None = None  # agent._outdate_unanswered
        self.last: Decision | None = None
        self._last_monitor = 0.0
        self._start_failures = 0
        self._peer_recorded_outdated = False
        self._record_rev_linked = -1
        self.penalty = FailurePenalty()  # the real agent's defaults
        self._published: tuple | None = None
        self.deadline_lease: int | None = None  #: the lease self.lease_deadline was renewed on

    def deadline(self) -> float | None:
        """lease_deadline as the real agent uses it; with the fix, a deadline counts for a
        holder or primary only while it belongs to the lease the leader key is on."""
        if ("deadline_of_key_lease" in self.world.fixes and (self.primary or self.leader)
                and (self.leader is None or self.leader.lease != self.deadline_lease)):
            return None
        return self.lease_deadline

    def start(self) -> None:
        self.proc.spawn(self._lease_loop())
        self.proc.spawn(self._main_loop())

    def log(self, what: str) -> None:
        self.sim.log(self.node, what)

    # ====================================================================== tasks
    def _lease_loop(self) -> Coro:
        period = TTL / 4
        while True:
            started = self.clock.now()
            try:
                r = yield from self.dcs.renew_lease()
                if r.lost:
                    self.lease_deadline = None
                    self.proc.set_wake()
                else:
                    self.lease_deadline = r.deadline
                    self.deadline_lease = r.lease
                    if self.primary:
                        yield from self._push_write_lease()
            except DCSError:
                self.proc.set_wake()
            yield Sleep(max(0.0, period - (self.clock.now() - started)))

    def _push_write_lease(self) -> Coro:
        """True once the volume took it."""
        deadline = self.deadline()
        if deadline is None and "deadline_of_key_lease" in self.world.fixes:
            return False  # never push "no limit"; the old write lease runs out by itself
        until = None if deadline is None else deadline - self.margin
        got = yield from self._vcall(lambda: self.vol.set_write_lease(until), LEASE_PUSH_TIMEOUT)
        return got is not TIMED_OUT

    def _vcall(self, call, timeout: float, defer: bool = True) -> Coro:
        """A control-socket call: its answer, or TIMED_OUT after `timeout` local seconds
        of a paused daemon, which then runs it when it resumes (unless `defer` is False:
        a status read)."""
        vol, waited = self.vol, 0.0
        while vol.daemon_paused and waited < timeout:
            step = min(0.05, timeout - waited)
            yield Sleep(step)
            waited += step
        if vol.daemon_paused:
            if defer:
                vol.deferred.append(call)
            return TIMED_OUT
        return call()

    def _status(self) -> Coro:
        """agent._volume_status: the status, or None if the daemon did not answer."""
        st = yield from self._vcall(self.vol.status, STATUS_TIMEOUT, defer=False)
        if st is TIMED_OUT:
            return None
        self._volume_seen = (st, self.clock.now())
        return st

    def _volume_for_decision(self) -> dict | None:
        """agent._volume_for_decision: a primary decides on the last status for a while."""
        if (self.volume is not None or not self.primary or self._volume_seen is None
                or self.world.broken("no_status_grace")):  # BROKEN: one timeout, a failover
            return self.volume
        status, at = self._volume_seen
        return status if self.clock.now() - at < VOLUME_STATUS_GRACE else None

    def _main_loop(self) -> Coro:
        while True:
            timeout = INTERVAL
            deadline = self.deadline()
            if (self.primary or self.leader) and deadline is not None:
                timeout = max(0.0, min(timeout, deadline - self.margin - self.clock.now()))
            yield WaitWake(timeout)
            self.proc.wake = False
            yield from self.cycle()

    # ====================================================================== one cycle
    def cycle(self) -> Coro:
        dcs_ok = True
        try:
            self.view = yield from self.dcs.load()
        except DCSError:
            dcs_ok = False
        self.volume = yield from self._status()
        if dcs_ok and not self.world.broken("promote_outdated"):  # BROKEN: it never reads the records
            yield from self._adopt_recorded_outdated()
            if not self.world.broken("keep_stale_adoption"):  # BROKEN (session 24's rules): stuck
                yield from self._undo_stale_adoption()
        now = self.clock.now()
        if not self.healthy and not self.primary and self.penalty.served(now):
            self.healthy = True
        seen = self._volume_for_decision()
        disk = DiskState(seen["disk"]) if seen else None
        local = LocalState(node=self.node, disk_state=disk, healthy=self.healthy and seen is not None,
                           is_primary=self.primary, dcs_ok=dcs_ok, lease_deadline=self.deadline(),
                           margin=self.margin)
        if ("key_on_my_lease" in self.world.fixes and dcs_ok and self.view.leader is not None
                and self.view.leader.node == self.node and self.view.leader.lease != self.dcs.lease_id):
            self.log(f"the leader key is on lease {self.view.leader.lease}, not on this process's"
                     f" lease {self.dcs.lease_id}: releasing it")
            if self.primary:
                yield from self._demote("leader key on a foreign lease")
            with contextlib.suppress(DCSError):
                yield from self.dcs.release_leader(self.view.leader)
            self.leader = None
            return None
        if self.leader and not self.view.is_leader(self.node) and dcs_ok:
            self.leader = None
        if self.view.is_leader(self.node) and self.leader is None and self.view.leader:
            self.leader = self.view.leader
        view = self.view
        if self.world.broken("promote_outdated"):  # BROKEN: decide() never sees the volume records
            view = dataclasses.replace(view, volumes=())
        decision = decide(view, local, now)
        if self.last is None or decision.reason != self.last.reason:
            self.log(f"{decision.action}: {decision.reason}")
        self.last = decision
        yield from self.act(decision)
        if dcs_ok:
            yield from self._publish()
        return decision

    def _adopt_recorded_outdated(self) -> Coro:
        """agent.py: mark the disk Outdated when the DCS records this node fenced."""
        if self._outdate_unanswered is not None and self._adopted is None \
                and "no_late_outdate_adoption" not in self.world.variants:
            mark = (self.volume or {}).get("agent_outdate_mark")
            if mark is not None:  # agent._take_unanswered_outdate
                self._adopted, self._outdate_unanswered = (self._outdate_unanswered, mark), None
                self.log("the outdate asked for earlier was carried out late: adopted")
        self._record_rev_linked, adopt = fence_to_adopt(
            self.volume, self.view.volume(RESOURCE), self.node, self.primary, self._record_rev_linked)
        if not adopt:
            return
        marked = yield from self._vcall(lambda: self.vol.outdate(unless_connected=True), CALL_TIMEOUT)
        if marked is TIMED_OUT:
            record = self.view.volume(RESOURCE)
            self._outdate_unanswered = record.revision if record else 0
            return
        self._outdate_unanswered = None
        self.volume = self.vol.status()  # the outdate call answers with the status
        if marked is not None:
            self.log("disk marked Outdated: the DCS records it so since the link was last up")
            record = self.view.volume(RESOURCE)
            self._adopted = (record.revision if record else 0, marked)

    def _undo_stale_adoption(self) -> Coro:
        """agent.py: make the disk UpToDate again when a newer record says so
        (decide.adoption_to_undo)."""
        record = self.view.volume(RESOURCE)
        self._adopted, undo = adoption_to_undo(self._adopted, self.volume, record, self.node)
        if not undo or self._adopted is None or record is None:
            return
        adopted, until = self._adopted, self.clock.now() + CALL_TIMEOUT
        done = yield from self._vcall(lambda: self.vol.undo_outdate(adopted[1], until), CALL_TIMEOUT)
        if done is TIMED_OUT:
            return  # the daemon refuses it past `until`; tried again next cycle
        self.volume = self.vol.status()
        if done != "retry":
            self._adopted = None  # done, or the disk moved on: the mark will never do
        if done is None:
            self.log(f"disk UpToDate again: record revision {record.revision} calls it so, newer"
                     f" than the fence adopted at {adopted[0]}")

    def _publish(self) -> Coro:
        v = self.volume or {}
        member = Member(node=self.node, role=NodeRole.PRIMARY if self.primary else NodeRole.REPLICA,
                        disk_state=DiskState(v["disk"]) if v else None, healthy=self.healthy and bool(v),
                        connection=(v.get("peer") or {}).get("connection", ""),
                        note=self.last.reason if self.last else "")
        # agent.py writes the member key every cycle; every write is a watch event that wakes
        # both agents, so they cycle back to back (about 2 RTTs per cycle). Unless the world
        # asks for that faithful busy loop, write only what changed (value or lease).
        sig = (member, self.dcs.lease_id)
        if not self.world.busy_watch and sig == self._published:
            return
        try:
            yield from self.dcs.touch_member(member)
            self._published = (member, self.dcs.lease_id)
        except DCSError:
            pass

    # ====================================================================== actions
    def act(self, d: Decision) -> Coro:
        a = d.action
        if a is Action.NOTHING:
            return
        if a is Action.DEMOTE:
            yield from self._demote(d.reason)
        elif a is Action.FOLLOW:
            if self.volume and self.volume.get("role") == "Primary":  # agent._stop_leftovers
                yield from self._demote(f"{d.reason} (a Primary volume left without leadership)")
        elif a is Action.ACQUIRE:
            yield from self._acquire(d)
        elif a in (Action.PROMOTE, Action.LEAD):
            if a is Action.PROMOTE:
                yield from self._promote(d.reason)
            else:
                yield from self._lead()
            if d.clear_switchover:
                with contextlib.suppress(DCSError):
                    yield from self.dcs.clear_switchover()
        elif a is Action.STEP_DOWN:
            yield from self._step_down(d)

    def _acquire(self, d: Decision) -> Coro:
        try:
            leader = yield from self.dcs.attempt_to_acquire_leader(self.view)
        except DCSError:
            return
        if leader is None:
            return
        self.leader = leader
        self.log(f"acquired the leader key (epoch {leader.epoch}, token {leader.revision},"
                 f" lease {leader.lease})")
        with contextlib.suppress(DCSError):
            yield from self.dcs.append_history(HistoryEntry(leader.epoch, self.node, "failover", 0.0), leader)
        yield from self._promote("acquired the leader key")

    def _record_volume_state(self, promoting: bool = False) -> Coro:
        if self.leader is None:
            return False
        current = self.view.volume(RESOURCE) or VolumeState.empty(RESOURCE)
        want = leader_volume_record(self.volume, current, RESOURCE, self.node, self.peer)
        if want is None:
            return False
        if not record_write_needed(want, current, self.peer, promoting):
            self._peer_recorded_outdated = want.disk(self.peer) is not DiskState.UP_TO_DATE
            return True
        try:
            ok = yield from self.dcs.set_volume_state(want, self.leader)
        except DCSError:
            return False
        if ok:
            self._peer_recorded_outdated = want.disk(self.peer) is not DiskState.UP_TO_DATE
            self.log(f"volume record: {dict(want.disks)}")
        return ok

    def _promote(self, why: str) -> Coro:
        if ("no_lease_no_promote" in self.world.fixes
                and (self.deadline() is None or self.deadline() - self.margin <= self.clock.now())):
            self.log("not promoting yet: no unexpired lease deadline")
            return
        self.volume = yield from self._status()  # taking the key took DCS round trips
        if self.volume is None:
            self.log("not promoting yet: the volume daemon did not answer")
            return
        if not (yield from self._record_volume_state(promoting=True)):
            return
        if not (yield from self._push_write_lease()) and "deadline_of_key_lease" in self.world.fixes:
            self.log("not promoting yet: the write lease was not pushed")
            return
        self.primary = True
        # the resource group: volume first, the rest instantly; waited for while the
        # lease lasts (agent._within_lease), then abandoned with a demotion
        deadline = self.deadline()
        left = None if deadline is None else deadline - self.margin - self.clock.now()
        outdated, epoch = self._peer_recorded_outdated, self.leader.epoch if self.leader else None
        if (left is None or left <= 0) and not self.world.broken("late_start"):
            err = TIMED_OUT  # agent._within_lease looks before the start has run
        else:
            # late_start: the start reaches the volume after that look, as when the agent
            # is paused between the two (a window of the real agent): the volume decides
            err = yield from self._vcall(lambda: self.vol.promote(peer_outdated=outdated, epoch=epoch),
                                         max(0.0, INTERVAL if left is None else left))
        if err is TIMED_OUT:
            self.log("promotion abandoned: the lease ran out while the volume was starting")
            yield from self._demote("the lease ran out while the resource group was starting")
            return
        if err is None:
            self.healthy = True
            self._start_failures = 0
        else:
            self.log(f"resource group failed to start: {err}")
            self.primary = False
            self._start_failures += 1
            deadline = self.deadline()  # when the start ended, before the status call
            left = None if deadline is None else deadline - self.margin - self.clock.now()
            st = yield from self._status()
            excuse = start_failure_excuse(st, left)
            if excuse:
                self.log(f"not counted as a node failure: {excuse}")
            else:
                self.healthy = False
                self.penalty.record(self.clock.now(), f"start failed: {err}")
            yield Sleep(min(2.0, 0.1 * 2 ** min(self._start_failures, 5)))

    def _lead(self) -> Coro:
        yield from self._record_volume_state()
        now = self.clock.now()
        if now - self._last_monitor < MONITOR_INTERVAL:
            return
        self._last_monitor = now
        if self.vol.daemon_paused:
            return  # the monitor's 3 s status call: the status grace decides first
        if self.vol.role is not Role.PRIMARY:
            self.healthy = False
            self.penalty.record(now, "the volume is not Primary")
            self.proc.set_wake()

    def _stop_group(self, why: str, graceful: bool) -> Coro:
        yield from self._vcall(lambda: self.vol.demote(force=False), STOP_TIMEOUT)
        self.primary = False

    def _demote(self, why: str) -> Coro:
        yield from self._vcall(lambda: self.vol.suspend(why), CALL_TIMEOUT)

        def lost_leadership() -> None:
            self.vol.lost_leadership = True  # the agent's "lost-leadership" call
        yield from self._vcall(lost_leadership, CALL_TIMEOUT)
        yield from self._vcall(lambda: self.vol.demote(force=True), FORCE_TIMEOUT)
        yield from self._stop_group(why, graceful=False)
        if self.leader is not None:
            with contextlib.suppress(DCSError):
                yield from self.dcs.release_leader(self.leader)
            self.leader = None

    def _step_down(self, d: Decision) -> Coro:
        yield from self._stop_group(d.reason, graceful=True)
        if self.leader is not None:
            with contextlib.suppress(DCSError):
                yield from self.dcs.release_leader(self.leader)
            self.leader = None
        if d.clear_switchover:
            with contextlib.suppress(DCSError):
                yield from self.dcs.clear_switchover()


# ========================================================================== fence-peer
def fence_peer_command(world: World, node: str, proc: Process) -> Coro:
    """``tandem fence-peer db``: a fresh DCS session; refuse unless this node holds
    the key; then record the peer Outdated under that key."""
    dcs = SimDCS(world.cluster, node, proc.clock, ttl=TTL, op_timeout=OP_TIMEOUT)
    try:
        v = yield from dcs.load()
        if v.leader is None or v.leader.node != node:
            return False
        return (yield from dcs.mark_peer_outdated(RESOURCE, world.peer_of(node), v.leader))
    except DCSError:
        return False


def fence_loop(world: World, vol: SimVolume, proc: Process, token: int) -> Coro:
    """Replicator._fence_and_resume: retry the hook while Primary, and only while this
    fence (`token`) is the volume's: a later one, or a demotion, took its writes."""
    def mine() -> bool:
        return vol.fencing and vol.fence_seq == token

    attempt = 0
    while vol.up and vol.role is Role.PRIMARY:
        if not mine():
            return
        attempt += 1
        if world.broken("skip_fence"):  # BROKEN: resume without recording the peer Outdated
            ok = True
        else:
            ok = yield from fence_peer_command(world, vol.node, proc)
        if ok:
            break
        yield Sleep(min(1.0, 0.1 * attempt))
    else:
        if mine():
            vol.fence_done(False)
        return
    if not mine():
        return
    world.sim.log(vol.node, f"fence-peer done after {attempt} attempt(s)")
    vol.fence_done(True)


def unfence_peer(world: World, vol: SimVolume, proc: Process, why: str) -> Coro:
    """DcsFencer.unfence: record the peer UpToDate again if the record says otherwise and
    the volume, asked after the read, says the peer has every write; a compare-and-set on
    the record's revision and the leader key read with it (a later fence always writes a
    newer revision). The volume notes that it sent one (Replicator._unfenced_since_fence)."""
    dcs = SimDCS(world.cluster, vol.node, proc.clock, ttl=TTL, op_timeout=OP_TIMEOUT)
    peer = world.peer_of(vol.node)
    for attempt in range(UNFENCE_ATTEMPTS):
        if attempt:
            yield Sleep(min(1.0, 0.1 * attempt))
            if not vol.up or not vol.peer_has_every_write():
                return
        try:
            v = yield from dcs.load()
            if world.broken("unfence_as_leader") and (v.leader is None or v.leader.node != vol.node):
                return  # session 23's rule: only under this node's leader key (seed 185)
            record = v.volume(RESOURCE)
            if record is None or record.disk(peer) in (None, DiskState.UP_TO_DATE):
                return
            if not vol.up or not vol.peer_has_every_write():
                return
            vol.unfenced_since_fence = True
            if (yield from dcs.clear_volume_fence(record.with_disk(peer, DiskState.UP_TO_DATE), v.leader)):
                world.sim.log(vol.node, f"unfence-peer: {peer} recorded UpToDate again ({why})")
                return
        except DCSError:
            continue
