"""The replicated volume as a small state machine (after tandem.volume.replicator).

What is kept because safety depends on it:

- role, local disk state, generation identifiers (a history of ids; the last
  is current), and the data as the set of write ids on this disk;
- the agent's **write lease** (local monotonic deadline): a write arriving past
  it suspends I/O; a later, unexpired lease resumes it (``set_write_lease``);
- ``io_open`` shared by the operator's suspend-io, the lease and fencing, and
  writes that arrive while it is closed wait and complete when it opens again
  (after re-checking only the role, as the real write path does);
- the **fence-peer hook**: a Primary that loses a peer it was replicating to
  starts a new generation, closes I/O and runs the fence command (a separate
  process, see ``tandem.sim.agent.fence_loop``) until it succeeds or the node
  is no longer Primary;
- the replication link (:class:`Repl`): cut by faults, a handshake that picks
  the sync source from generation ids (a Primary never becomes a target), a
  resync of random duration that copies the source's data to the target
  (Inconsistent until done). While connected, a write is on both disks before
  it is acked;
- a split brain is resolved as the lab cluster's volumes do, by the policy
  discard-least-recent-primary (``genid.policy_victim``) on what it ranks by:
  the disk state, the leader epoch of each side's latest promotion (kept on
  disk) and the agent's "lost the leader key" mark (in memory: a crash forgets
  it). The victim's changes are overwritten by the resync, so a victim holding
  acknowledged writes is a lost write (torture 90:37). The model resolves every
  split brain so, where the real volume resolves only bitmap-repairable ones (the
  others stay StandAlone): more chances to lose writes, none to find a cluster
  stuck StandAlone.

Writes are atomic (issued and acked in one instant): no write is ever "in
flight" when the link drops, so the held-writes list of the real fencing
path is always empty and only the writes waiting on ``io_open`` matter.
The exception is a paused daemon (SIGSTOP, the lab's ``pause volume-db``):

- the paused daemon completes nothing: writes wait in the kernel, control calls
  wait in their socket (the agent times out, the daemon still runs them when it
  resumes, in order), its fence-peer and unfence-peer calls stop where they are;
- its peer's writes wait for its ack; after the ping timeout the peer drops the
  link (a Primary peer fences), the paused side learns of the loss only when it
  resumes, and its connector then dials at once;
- a write the peer acknowledges late completes only within the write lease (it
  waits for a renewal, or fails with the demotion: ``Replicator._park_past_lease``).

**Unfence-peer** (``Replicator._unfence_soon``): a volume, whatever its role,
records its peer UpToDate again after a resync as source, after a fence that
landed once the peer was back, and when its own disk fails while the peer took
every write; after reading the record, only while the peer still has every write,
with a compare-and-set on the record alone (torture 184:34 and simulation seeds
185, 3451 and 5236 lost no data but left no disk promotable without it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tandem.volume import genid
from tandem.volume.states import DiskState, Role

if TYPE_CHECKING:
    from tandem.sim.world import World

UP, OUT, INC, FAILED = DiskState.UP_TO_DATE, DiskState.OUTDATED, DiskState.INCONSISTENT, DiskState.FAILED
PING_TIMEOUT = 0.5  #: the lab's ping_timeout: a silent peer's link is dropped after this


class SimVolume:
    def __init__(self, world: World, node: str):
        self.world = world
        self.sim = world.sim
        self.node = node
        self.clock = world.clocks[node]
        self.up = True
        self.role = Role.SECONDARY
        #: the metadata's sequence number: every change of the disk state or the
        #: generations writes it anew (Replicator.undo_outdate's mark)
        self.meta_seq = 0
        self.agent_outdate_mark: int | None = None  # Replicator._agent_outdate_mark
        self.disk = UP
        self.failed_from: DiskState | None = None  # what a Failed disk was before it failed
        self.data: set[int] = set()
        self.gens: tuple[int, ...] = (1,)
        self.wlease: float | None = None
        self.io_open = True
        self.held_by_operator = False
        self.lease_held_io = False
        self.fencing = False
        #: Replicator._begin_fence's token: a fence loop stops once a later fence or a
        #: demotion took its writes (seed 652145: a fence of an earlier term succeeded
        #: in the next one and left I/O shut)
        self.fence_seq = 0
        self.blocked: list[int] = []
        self.peer_disk: DiskState | None = None
        self.primary_epoch = 0  # the metadata's: survives a crash
        self.lost_leadership = False  # the daemon's memory: a crash forgets it
        self.repl: Repl = None  # type: ignore[assignment]  # set by the world
        # the daemon paused (SIGSTOP): see the module docstring
        self.daemon_paused = 0
        self.deferred: list[Callable[[], Any]] = []  # control calls waiting in the socket
        self.paused_writes: list[int] = []  # writes waiting in the kernel
        self.loss_pending = False  # the link dropped while paused: handled on resume
        self.awaiting_peer: list[int] = []  # written here, the paused peer's ack outstanding
        self.lease_parked: list[int] = []  # acknowledged by the peer after the write lease ran out
        #: MetaState.peer_had_all: the disk failed while the peer took every write, and
        #: this node was not Primary nor a resync source since (kept across restarts)
        self.peer_had_all = False
        self.vouch_retries = 0  #: Replicator._vouch_retries
        self.unfenced_since_fence = False  # Replicator._unfenced_since_fence
        # writable intervals on true time, for the checker
        self._open: float | None = None
        self._open_end = math.inf
        self.intervals: list[tuple[float, float]] = []

    @property
    def disk(self) -> DiskState:
        return self._disk

    @disk.setter
    def disk(self, value: DiskState) -> None:
        self._disk, self.meta_seq = value, self.meta_seq + 1

    @property
    def gens(self) -> tuple[int, ...]:
        return self._gens

    @gens.setter
    def gens(self, value: tuple[int, ...]) -> None:
        self._gens, self.meta_seq = value, self.meta_seq + 1

    # --- what the agent reads ----------------------------------------------------------
    def status(self) -> dict:
        r = self.repl
        if r.state == "connected":
            conn = "Connected"
        elif r.state == "sync":
            conn = "SyncSource" if r.source is self else "SyncTarget"
        else:
            conn = ""
        peer = r.peer_of(self)
        pd = peer.disk if r.state != "down" else self.peer_disk
        out = {"role": self.role.value, "disk": self.disk.value,
               "peer": {"connection": conn, "disk": pd.value if pd else None,
                        "role": peer.role.value if r.state != "down" else "Unknown"}}
        if self.disk is OUT and self.meta_seq == self.agent_outdate_mark:
            out["agent_outdate_mark"] = self.meta_seq
        return out

    # --- writable intervals ------------------------------------------------------------
    def writable(self) -> bool:
        return (self.up and self.role is Role.PRIMARY and self.io_open and self.disk is not FAILED
                and (self.wlease is None or self.clock.now() < self.wlease))

    def track(self) -> None:
        now = self.sim.now
        if self._open is not None and now >= self._open_end:
            self._close(self._open_end)
        w = self.writable()
        end = math.inf if self.wlease is None else self.clock.true_at(self.wlease)
        if w and self._open is None:
            self._open, self._open_end = now, end
            self.sim.log(self.node, f"writable (lease until {end:.4f})")
        elif w:
            self._open_end = end
        elif self._open is not None:
            self._close(min(now, self._open_end))

    def _close(self, t: float) -> None:
        self.intervals.append((self._open, t))  # type: ignore[arg-type]
        self.sim.log(self.node, f"not writable since {t:.4f}")
        self._open = None
        self._open_end = math.inf

    def finish(self) -> None:
        self.track()
        if self._open is not None:
            self.intervals.append((self._open, min(self.sim.now, self._open_end)))
            self._open = None

    # --- the block API ---------------------------------------------------------------
    def write(self, wid: int) -> str:
        if self.up and self.daemon_paused:
            self.paused_writes.append(wid)  # the FUSE request waits for the daemon
            return "blocked"
        if not self.up or self.role is not Role.PRIMARY:
            return "refused"
        if self.wlease is not None and self.clock.now() >= self.wlease:
            self._lease_expired()
        if not self.io_open:
            self.blocked.append(wid)
            return "blocked"
        self._complete(wid)
        return "acked"

    def _complete(self, wid: int) -> None:
        if self.disk is FAILED:
            return  # EIO: never acknowledged
        self.data.add(wid)
        r = self.repl
        if r.state == "connected" or (r.state == "sync" and r.source is self):
            peer = r.peer_of(self)
            if peer.daemon_paused:
                self.awaiting_peer.append(wid)  # its ack comes when the peer resumes
                return
            peer.data.add(wid)
        self.world.on_ack(wid, self)

    def _ack_late(self, wid: int) -> None:
        """A write whose last half ends now, long after it started (the peer's ack after
        a pause): Replicator._end_write, with the write lease's parking."""
        if self.wlease is not None and self.clock.now() >= self.wlease:
            if self.role is Role.PRIMARY:
                self.lease_parked.append(wid)
            return  # demoted already: it fails
        self.world.on_ack(wid, self)

    def peer_acked(self) -> None:
        """The paused peer resumed on a link still up: it applies and acks what waited."""
        waiting, self.awaiting_peer = self.awaiting_peer, []
        peer = self.repl.peer_of(self)
        for wid in waiting:
            peer.data.add(wid)
            self._ack_late(wid)

    def _release_blocked(self) -> None:
        blocked, self.blocked = self.blocked, []
        for wid in blocked:
            if self.up and self.role is Role.PRIMARY:
                self._complete(wid)  # the real write path re-checks only the role here

    # --- control socket commands ------------------------------------------------------
    def set_write_lease(self, until: float | None) -> None:
        self.wlease = until
        if self.lease_parked and (until is None or self.clock.now() < until):
            parked, self.lease_parked = self.lease_parked, []
            for wid in parked:
                self.world.on_ack(wid, self)  # the lease was renewed
        if until is not None and self.clock.now() < until and self.lease_held_io:
            self.lease_held_io = False
            # Replicator.set_write_lease: the lease lifts its own hold only, never in the
            # middle of a fence (the fence reopens I/O when it succeeds) nor under an
            # operator's (suspend-io, a forced demotion's)
            if "fencing_survives_lease_renewal" not in self.world.fixes:
                self.resume()  # the bug: I/O reopened in the middle of a fence
            elif not self.fencing and not self.held_by_operator:
                self.resume()
        self.track()

    def _lease_expired(self) -> None:
        """Replicator._lease_expired: a hold of the lease's own, apart from the operator's."""
        if not self.lease_held_io:
            self.lease_held_io = True
            self.io_open = False
            self.track()

    def suspend(self, reason: str) -> None:
        self.held_by_operator = True
        self.io_open = False
        self.track()

    def resume(self) -> None:
        self.held_by_operator = False
        self.io_open = True
        self.track()
        self._release_blocked()

    def promote(self, peer_outdated: bool = False, epoch: int | None = None) -> str | None:
        """None on success, else why the volume refuses. With the link down and the
        peer not known Outdated (`peer_outdated`: the agent recorded it), I/O waits
        for the fence-peer hook, as on a link lost while Primary."""
        if self.role is Role.PRIMARY:
            if epoch is not None:
                self.primary_epoch = epoch
            return None
        if self.disk is not UP:
            return f"local disk is {self.disk}"
        if (epoch is not None and self.wlease is not None and self.clock.now() >= self.wlease
                and not self.world.broken("promote_past_lease")):  # BROKEN: before seed 518200
            # Replicator._promote_locked: the agent's promotion with its write lease run
            # out (it was paused between pushing the lease and this call, and the key
            # may be the peer's now)
            return "the agent's write lease has run out"
        r = self.repl
        peer = r.peer_of(self)
        if r.state != "down" and peer.role is Role.PRIMARY:
            return "peer is Primary"
        if r.state == "sync" and r.target is self:
            return "this node is a resync target"
        fence = False
        if r.state == "down":
            self.gens = (*self.gens, self.world.new_gen())
            if peer_outdated:
                self.peer_disk = OUT
            unfenced = self.unfenced_since_fence and not self.world.broken("trust_late_unfence")
            fence = self.peer_disk is not OUT or unfenced  # BROKEN variant: review 24
        if "clear_hold_on_promote" in self.world.fixes and not self.fencing and not self.lease_held_io:
            # a suspend-io from an earlier demotion must not outlive it (the lease's own
            # hold is lifted by the next lease, which the agent pushes before this)
            self.held_by_operator, self.io_open = False, True
        self.role = Role.PRIMARY
        self.peer_had_all = False  # it may write without the peer from here
        self.lost_leadership = False
        self.primary_epoch = epoch or 0
        if fence:
            self.fencing = True
            self.io_open = False
            self.world.start_fence(self)
        self.sim.log(self.node, f"volume Primary (gen {self.gens[-1]}, link {r.state})")
        self.world.on_promote(self)
        self.track()
        r.try_connect()
        return None

    def demote(self, force: bool = False) -> None:
        if self.role is Role.SECONDARY:
            if force and not self.fencing and "clear_hold_on_promote" in self.world.fixes:
                self.held_by_operator, self.io_open = False, True  # a hold left by suspend-io
            return
        self.lease_parked.clear()  # they fail with EIO
        if force:
            self.suspend("forced demotion")
            self.role = Role.SECONDARY
            self.fencing = False  # _fail_fenced_waiters
            self.io_open = True
            self.blocked.clear()  # they fail with EIO
            self.awaiting_peer.clear()
        else:
            # Replicator._demote: writes held by a fence fail, and the gate opens (a
            # Secondary refuses writes anyway); a hold of the term ends with it
            self.role = Role.SECONDARY
            self.fencing = False
            self.blocked.clear()
            self.held_by_operator, self.io_open = False, True
        self.sim.log(self.node, "volume Secondary" + (" (forced)" if force else ""))
        self.track()

    def outdate(self, unless_connected: bool = False) -> int | None:
        """Replicator.outdate: the agent adopting the DCS record of a fence. Returns
        the mark (None: not marked)."""
        if self.role is Role.PRIMARY or not self.up:
            return None
        if unless_connected and self.repl.state != "down":
            return None
        if self.disk is UP:
            self.disk = OUT
            self.sim.log(self.node, "disk marked Outdated")
        elif self.disk is FAILED and self.failed_from is UP:
            self.failed_from = OUT  # attach brings it back Outdated
            self.meta_seq += 1
            self.sim.log(self.node, "failed disk marked Outdated")
        else:
            return None
        if unless_connected:
            self.agent_outdate_mark = self.meta_seq
        return self.meta_seq

    def undo_outdate(self, mark: object, until: float) -> str | None:
        """Replicator.undo_outdate: Outdated back to UpToDate if nothing changed the disk
        since the agent's outdate marked it, no link, and not past the request's deadline
        (a request held while the daemon was paused). None when done, else "spent" or
        "retry"."""
        if not self.up:
            return "retry"
        if self.disk is not OUT or self.meta_seq != mark:
            return "spent"
        if self.role is not Role.SECONDARY or self.repl.state != "down":
            return "retry"
        if self.clock.now() > until:
            self.sim.log(self.node, "undo of the agent's outdate refused: past its deadline")
            return "retry"
        self.disk = UP
        self.peer_had_all = False  # Replicator._MARK_SPENT
        self.sim.log(self.node, "disk UpToDate again (the agent's stale adoption undone)")
        return None

    # --- link events --------------------------------------------------------------------
    def on_link_lost(self) -> None:
        if self.daemon_paused:
            self.loss_pending = True  # its receiver notices when the daemon resumes
            return
        self.meta_seq += 1  # the replicator saves the bitmap when a replicating link drops
        waiting, self.awaiting_peer = self.awaiting_peer, []
        if self.role is Role.PRIMARY and self.disk is not FAILED:  # a failed disk never fences (87dddc9)
            self.gens = (*self.gens, self.world.new_gen())
            self.fencing = True
            self.io_open = False
            self.blocked[:0] = waiting  # held for the fence (_hold_for_link_loss)
            self.track()
            self.world.start_fence(self)

    def fence_done(self, ok: bool) -> None:
        """End of _fence_and_resume: ok, or the node stopped being Primary."""
        if not ok:
            self.fencing = False
            self.blocked.clear()
            return
        if not self.fencing:
            return  # a forced demotion failed the held writes already
        self.fencing = False
        self.unfenced_since_fence = False  # a late unfence's compare-and-set fails now
        if self.repl.state == "down":
            self.peer_disk = OUT
        else:
            # the fence landed after the peer came back: its state comes from the link
            self.world.start_unfence(self, "the fence landed after it came back")
        if not self.held_by_operator and not self.lease_held_io:
            self.io_open = True
            self.track()
            self._release_blocked()

    # --- disk failure -------------------------------------------------------------------
    def fail_disk(self) -> None:
        """Replicator._disk_failed: every I/O of the backing store fails; the disk is
        Failed (remembered across restarts), no write completes, the link drops."""
        if self.disk is FAILED:
            return
        # a peer with an UpToDate disk took every write: this one comes back Outdated
        was = self.disk
        peer_has_all = self.peer_up_to_date_and_linked()
        if was is UP and peer_has_all:
            was = OUT
        self.failed_from, self.disk = was, FAILED
        self.peer_had_all = peer_has_all or self.peer_had_all  # one still owed stays owed
        self.sim.log(self.node, f"disk Failed (back as {self.failed_from})")
        self.track()
        self.repl.drop("peer disk failed")
        if peer_has_all:
            self.world.start_unfence(self, "this disk failed while the peer took every write")

    def peer_up_to_date_and_linked(self) -> bool:
        r = self.repl
        return r.state == "connected" and r.peer_of(self).disk is UP

    def peer_has_every_write(self) -> bool:
        """Replicator._peer_has_every_write: whether the peer may be recorded UpToDate now."""
        if self.fencing:
            return False
        if self.disk is FAILED:
            return self.peer_had_all
        if self.peer_had_all and self.role is not Role.PRIMARY:
            return True
        return self.peer_up_to_date_and_linked() and not self.awaiting_peer

    def replace_disk(self) -> None:
        """`volume create` on a new disk (the host is powered off): empty, fresh
        generation, Inconsistent until a full sync fills it."""
        self.data, self.gens = set(), (self.world.new_gen(),)
        self.disk, self.failed_from = INC, None
        self.peer_had_all = False
        self.primary_epoch = 0  # new metadata
        self.sim.log(self.node, "disk replaced: empty, Inconsistent")

    def attach(self) -> None:
        """Replicator.attach: the same disk back, in the state it had when it failed."""
        if self.disk is FAILED:
            self.disk, self.failed_from = self.failed_from or OUT, None
            if self.world.broken("forget_at_restart"):  # BROKEN: seed 318038
                self.peer_had_all = False
            self.sim.log(self.node, f"disk attached again as {self.disk}")

    # --- host crash and restart ---------------------------------------------------------
    def crash(self) -> None:
        self.up = False
        self.role = Role.SECONDARY
        self.lost_leadership = False
        self.io_open, self.held_by_operator, self.lease_held_io = True, False, False
        self.fencing = False
        self.blocked.clear()
        self.wlease = None
        self.daemon_paused, self.loss_pending = 0, False  # the process is gone
        self.deferred.clear()
        self.paused_writes.clear()
        self.awaiting_peer.clear()
        self.lease_parked.clear()
        if self.world.broken("forget_at_restart"):  # BROKEN: memory only (seed 318038)
            self.peer_had_all = False
        self.unfenced_since_fence = False  # memory only (a late unfence lands within ms)
        self.track()
        self.repl.drop("host crashed")

    def restart(self) -> None:
        self.up = True
        self.meta_seq += 1  # a daemon's start (and stop) writes its metadata
        if self.peer_had_all:  # Replicator.start: the unfence still owed
            self.world.start_unfence(self, "this disk failed while the peer took every write,"
                                           " before a restart")
        self.track()
        self.repl.try_connect()

    # --- the daemon paused (SIGSTOP) and resumed --------------------------------------
    def pause_daemon(self) -> None:
        if not self.up:
            return
        self.daemon_paused += 1
        if self.daemon_paused > 1:
            return
        self.sim.log(self.node, "volume daemon paused")
        for p in self.world.nodes[self.node].fences:
            p.pause()
        r = self.repl
        if r.state != "down":
            self.sim.after(PING_TIMEOUT, r.ping_timeout, self, r.session)

    def resume_daemon(self) -> None:
        if not self.daemon_paused:
            return  # crashed meanwhile: a new process, never paused
        self.daemon_paused -= 1
        if self.daemon_paused:
            return
        self.sim.log(self.node, "volume daemon resumed")
        for p in self.world.nodes[self.node].fences:
            p.resume()
        calls, self.deferred = self.deferred, []
        for call in calls:  # the agent's requests, in the order they were sent
            call()
        if self.loss_pending:
            self.loss_pending = False
            self.on_link_lost()
        r = self.repl
        if r.state != "down":
            for v in (self, r.peer_of(self)):
                if v.awaiting_peer and not v.daemon_paused and not r.peer_of(v).daemon_paused:
                    v.peer_acked()
        writes, self.paused_writes = self.paused_writes, []
        for wid in writes:
            self.write(wid)  # the kernel's requests, served now: the usual checks
        self.track()
        r.try_connect()  # the connector dials at once


class Repl:
    """The replication link between the two volumes."""

    def __init__(self, world: World, a: SimVolume, b: SimVolume):
        self.world = world
        self.sim = world.sim
        self.a, self.b = a, b
        self.cuts = 0
        self.state = "down"  # down | sync | connected
        self.source: SimVolume | None = None
        self.target: SimVolume | None = None
        self.session = 0
        self.split_brain = False
        a.repl = b.repl = self

    def peer_of(self, v: SimVolume) -> SimVolume:
        return self.b if v is self.a else self.a

    def drop(self, reason: str) -> None:
        if self.state == "down":
            return
        self.state = "down"
        self.session += 1
        self.source = self.target = None
        self.sim.log("link", f"down: {reason}")
        for v in (self.a, self.b):
            if v.up:
                v.on_link_lost()

    def ping_timeout(self, v: SimVolume, session: int) -> None:
        if session == self.session and self.state != "down" and v.daemon_paused:
            self.drop(f"ping timeout ({v.node}'s volume daemon is silent)")

    def try_connect(self) -> None:
        a, b = self.a, self.b
        if self.state != "down" or self.cuts or not (a.up and b.up) or FAILED in (a.disk, b.disk):
            return
        if a.daemon_paused or b.daemon_paused:
            return
        if a.role is Role.PRIMARY and b.role is Role.PRIMARY:
            return
        ga, gb = a.gens[-1], b.gens[-1]
        a.peer_disk = b.peer_disk = None  # from here on the link says what the peer's disk is
        if ga == gb and a.disk is not INC and b.disk is not INC:
            self.state = "connected"
            self.session += 1
            self.sim.log("link", f"connected, in sync (gen {ga})")
            vouching = [v for v in (a, b) if v.peer_had_all and v.role is not Role.PRIMARY]
            if len(vouching) == 2:  # Replicator: both failed in sync, an operator decides
                a.peer_had_all = b.peer_had_all = False
            if len(vouching) == 1 and not self.world.broken("no_vouch"):  # BROKEN: before session 26
                # genid.apply_vouches: x's disk failed while y took every write, and x has
                # not been Primary since: y has every write (the same generation: y wrote
                # none alone). Not from an UpToDate x: in sync since, its mark is stale.
                x = vouching[0]
                y = self.peer_of(x)
                if x.disk is not UP and y.disk is OUT:
                    y.disk = UP
                    y.peer_had_all = False  # Replicator._MARK_SPENT
                    self.sim.log("link", f"{x.node} vouches that {y.node} has every write:"
                                         f" {y.node} UpToDate")
            for v, after in ((a, genid.disk_after_connect(True, a.disk, b.disk)),
                             (b, genid.disk_after_connect(True, b.disk, a.disk))):
                if after is not v.disk:
                    v.disk, v.peer_had_all = after, False  # Replicator._MARK_SPENT
            return
        by_generation = False
        if a.disk is INC or b.disk is INC:  # never a sync source (a new disk: unrelated gens)
            source = b if a.disk is INC else a
        elif ga in b.gens:
            source, by_generation = b, True
        elif gb in a.gens:
            source, by_generation = a, True
        else:
            victim = self._split_brain_victim()
            if victim is None or victim.role is Role.PRIMARY:  # StandAlone until it can decide
                if not self.split_brain:
                    self.split_brain = True
                    self.sim.log("link", f"split brain (gens {ga} / {gb}): StandAlone")
                return
            source = self.peer_of(victim)
            self.sim.log("link", f"split brain (gens {ga} / {gb}) resolved by"
                                 f" {self.world.split_brain_policy}: {victim.node}'s changes go")
            self.split_brain = False
        target = self.peer_of(source)
        if (by_generation and source.disk is OUT and target.disk is UP
                and not self.world.broken("outdated_source")):  # BROKEN: torture 193:37
            # genid._outdated_ahead: an Outdated disk is never the source of its UpToDate
            # peer; what it wrote since their common generation goes
            self.sim.log("link", f"{source.node} is ahead but Outdated: its changes go")
            source, target = target, source
        if target.role is Role.PRIMARY or source.disk is INC:
            return
        self.state, self.source, self.target = "sync", source, target
        source.peer_had_all = False  # its data replaces the peer's (Replicator: on is_source)
        self.session += 1
        target.disk = INC
        self.sim.log("link", f"resync {source.node} -> {target.node}"
                             f" (gens {source.gens[-1]} / {target.gens[-1]})")
        self.sim.after(self.sim.rng.uniform(0.02, 0.6), self._sync_done, self.session)

    def _split_brain_victim(self) -> SimVolume | None:
        policy = self.world.split_brain_policy
        if policy is genid.SplitBrainPolicy.DISCONNECT:
            return None
        by_memory = self.world.broken("policy_by_memory")  # BROKEN: the rule before 90:37

        def flags(v: SimVolume) -> genid.SyncFlags:
            return genid.SyncFlags(node=v.node, disk=v.disk, role=v.role, lost_leadership=v.lost_leadership,
                                   primary_epoch=0 if by_memory else v.primary_epoch, bitmap_weight=1)
        if by_memory:
            a, b = (replace(flags(v), disk=UP) for v in (self.a, self.b))
        else:
            a, b = flags(self.a), flags(self.b)
        victim = genid.policy_victim(policy, a, b)
        return None if victim is None else self.a if victim == "local" else self.b

    def _sync_done(self, session: int) -> None:
        if session != self.session or self.state != "sync":
            return
        s, t = self.source, self.target
        assert s is not None and t is not None
        if s.daemon_paused or t.daemon_paused:
            self.sim.after(0.05, self._sync_done, session)  # the ping timeout may end it first
            return
        self.world.check_overwrite(t, s)
        t.data = set(s.data)
        t.gens = s.gens
        t.disk = genid.disk_after_resync(s.disk)
        if t.disk is UP:
            t.peer_had_all = False  # Replicator._MARK_SPENT
        self.world.resynced(t.node)
        self.state = "connected"
        self.sim.log("link", f"resync done: {t.node} {t.disk}")
        self.world.start_unfence(s, "resynced")
        if t.disk is OUT and t.peer_had_all and s.disk is OUT and t.vouch_retries < 3:
            # Replicator._pull: a new handshake decides the vouch (the product's source
            # may have been a crashed Primary, whom no vouch covers; not modelled here)
            t.vouch_retries += 1
            self.drop("resync done: the peer can be vouched for now")
