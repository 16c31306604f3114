"""The volume simulation: two replicas (:mod:`tandem.sim.replica`) over a simulated TCP
network (:mod:`tandem.sim.tcp`), an application writing and flushing on the Primary, an
HA arbiter, faults from a seed, and the checker.

The **arbiter** stands for the cluster agent and its DCS (simulated in full by the HA
model): one leader at a time, a leader lease of ``TTL`` seconds that lapses when the
leader's host crashes or is cut from the DCS, the write lease (the volume stops
completing writes ``MARGIN`` before the leader lease lapses), the volume record (a
new leader records its peer Outdated unless the peer is Connected and UpToDate, and
records it UpToDate again once it is), promotion only of a disk that is UpToDate and
not recorded Outdated, and ``tandem fence-peer`` (succeeds only for the leader, while
it reaches the DCS, and records the peer Outdated). An operator resolves a split
brain that the volume refused (StandAlone) with discard-my-data on the node that is
not the leader, once the faults healed; these resolutions are counted, not hidden.

Invariants (checked on the history):

- ``ack_unreplicated``: when the application sees a write acknowledged, the peer wrote
  it, or the peer is recorded Outdated (fenced) and the block is in the bitmap;
- ``lost_write``: a promoted disk, and both disks at the end, hold every write whose
  acknowledgement was followed by a completed flush (write-through: every acknowledged
  write), or a newer write of that block;
- ``ack_not_durable`` (write-through): when the application sees a write acknowledged, it
  is on stable storage locally and, unless the peer is fenced, on the peer's;
- ``outdated_promoted``: no disk that is not UpToDate is promoted without force;
- ``split_brain_merged`` / ``divergent_acked``: a resync never overwrites writes that
  were acknowledged on the target and never seen by the source; silently (no
  discard-my-data) or with the operator's discard (two nodes acknowledged writes);
- ``replicas_differ`` / ``no_convergence``: after the faults healed, the link is
  Connected, both disks UpToDate and block for block identical;
- ``primary_sync_target``: a Primary never becomes a resync target (reads of blocks not yet
  resynced would return stale data, and the peer's older data would be the reference);
- ``stale_peer_state`` / ``no_primary``: after the faults healed each side knows the other's
  role and disk, and the leader is Primary;
- ``protocol_error``: neither side ever breaks the wire protocol.

**Sealed frames** (``sealed=True``; ``tandem sim --sealed``): the frames after the handshake
are sealed as the daemon seals them, so a frame that goes out of the order it was sealed in
fails authentication at the peer, a ``protocol_error``. Broken variant:
``late_automatic_frames`` takes out (and so seals) the frames the state machine queued by
itself (pongs, a refusal's Disconnect) when the input is decoded, but sends them after the
frames the driver sends while handling the same input: session 17's bug in the real link,
where the receiver took pongs under the state lock alone and sent them later. Off by
default: the recorded seeds replay only unsealed.

**Cache modes**: both are simulated, even seeds write-through and odd ones write-back (or
one forced with ``cache=``; ``tandem sim --cache``). Write-back: the application flushes,
a crash loses what no flush covered. Write-through: the application never flushes (ext4
sends none to a write-through loop device) and relies on completion alone. Broken
variants: ``wt_ack_before_durable`` (the peer applies a durable Write to its page cache
and acknowledges it) and ``wt_no_local_sync`` (the Primary's own write without RWF_DSYNC).

Findings kept as variants: ``no_fuse_teardown`` (seed 77) shows that the replicator itself
completes writes that were waiting for the peer successfully when the link drops after a
forced demotion; only the FUSE teardown in ``demote(force)`` stops the application from
seeing those acks. And a crashed Primary that returns before a failover is the resync
source of its activity-log extents (genid rule 4), so acknowledged writes that it never
flushed are lost although the peer held them: allowed by block-device semantics (only
flushed writes are promised), which is what ``lost_write`` checks.

``promote_in_handshake`` (seeds 5000, 4965, 5881): promote() while the handshake decides
the resync direction started a generation the peer never heard of (our StateExchange,
already sent, said Secondary with the old generation), so a new Primary became the
SyncTarget of older data. promote() now waits for the decision (DRBD defers a role change
during a connection's state change the same way). ``al_drop_unflushed`` (seeds 6216,
8979, 11562, 11688): an activity-log extent was evicted, or the log cleared on demotion,
while a completed write in it was only in a page cache; a crash lost it on one disk and no
resync covered it (replicas differ for good). Both now flush first (DRBD keeps an extent
in its log until the peer's barrier ack and flushes before a log transaction). Seeds 4079
and 7381 were the checker's: a crash had reverted a block to an older acknowledged write,
the source held a later write over it, and ``split_brain_merged`` took that for a loss;
it now follows what overwrote what (``parent``).

``al_kept_after_demote`` (seed 314725, found in session 5's batch of 100,000): a
demotion emptied the activity log on disk but not in memory; after a switchover and a
switchover back, the new term's first write into a still-listed extent looked hot, so it
was never logged; the new Primary crashed with it unflushed, no resync covered it, and
the replicas differed for good. The demotion now forgets the idle extents in memory too.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import tandem.volume.peer as peer_mod
from tandem.sim.kernel import Sim
from tandem.sim.replica import BLOCK, NBLOCKS, SIZE, Durable, Op, Replica
from tandem.sim.schedule import Result
from tandem.sim.tcp import Wire
from tandem.sim.world import Fault, Violation
from tandem.volume.bitmap import DirtyBitmap
from tandem.volume.genid import GenerationIds
from tandem.volume.states import ConnectionState, DiskState, Role

NODES = ("node1", "node2")
TTL, MARGIN = 1.0, 0.3
AGENT_EVERY = 0.1
WRITE_EVERY = 0.02
FLUSH_EVERY = 0.08
MAX_WRITES = 3
FAULT_WINDOW = (0.5, 4.0)
SETTLE = 5.0  #: seconds after the last heal by which both disks must be identical
KIND_WEIGHTS = {"crash": 3, "partition": 3, "reset": 3, "slow": 1, "isolate": 2, "switchover": 2}
DURATION = {"crash": (0.05, 2.5), "partition": (0.05, 2.5), "slow": (0.2, 2.5), "isolate": (0.2, 2.5)}
VARIANTS = ("none", "ack_before_peer", "resync_wrong_direction", "skip_bitmap_mark", "promote_outdated",
            "no_fence", "no_fuse_teardown", "promote_in_handshake", "al_drop_unflushed",
            "wt_ack_before_durable", "wt_no_local_sync", "al_kept_after_demote",
            "late_automatic_frames")
CACHES = ("write-back", "write-through")


def cache_of(seed: int, cache: str | None = None) -> str:
    """The cache mode of a schedule: `cache`, or by the seed's parity (even seeds
    write-through, odd ones write-back), so every batch covers both and a seed replays
    in the mode it ran in."""
    if cache is None:
        return CACHES[1] if seed % 2 == 0 else CACHES[0]
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}, not {cache!r}")
    return cache


def generate(seed: int) -> list[Fault]:
    rng = random.Random(seed * 2 + 1)
    kinds, weights = zip(*KIND_WEIGHTS.items(), strict=True)
    out = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choices(kinds, weights)[0]
        at = round(rng.uniform(*FAULT_WINDOW), 3)
        node = rng.choice(NODES) if kind in ("crash", "isolate") else None
        if kind in ("reset", "switchover"):
            out.append(Fault(kind, None, at))
            continue
        lo, hi = DURATION[kind]
        p = round(rng.uniform(0.001, 0.2), 4) if kind == "slow" else 0.0
        out.append(Fault(kind, node, at, round(rng.uniform(lo, hi), 3), p))
    return sorted(out, key=lambda f: (f.at, f.kind))


def healed_at(faults: list[Fault]) -> float:
    return max([f.at + f.duration for f in faults] + [FAULT_WINDOW[0]])


class VolWorld:
    #: the write-through contract, checked when the application sees an ack (the history
    #: checks, lost_write and replicas_differ, apply as well)
    check_at_ack = True

    def __init__(self, seed: int, faults: list[Fault], variant: str = "none", cache: str | None = None,
                 sealed: bool = False):
        self.sim = Sim(seed)
        #: seal the frames as the daemon does. Off by default: the recorded seeds replay
        #: only with the byte counts they were found with (the simulated TCP draws its
        #: segment cuts from the same RNG; 16 more bytes a frame give another schedule).
        #: On, a frame sealed out of wire order fails authentication: a protocol_error.
        self.sealed = sealed
        self.variant = variant
        self.cache = cache_of(seed, cache)
        self.write_through = self.cache == "write-through"
        self.sim.log("world", f"cache {self.cache}")
        self.wire = Wire(self.sim)
        self._uuid = random.Random(seed ^ 0x5EED)
        ids = GenerationIds(self.uuid())
        self.durable = {n: Durable(n, ids) for n in NODES}
        self.reps = {n: Replica(self, n, self.durable[n], variant) for n in NODES}
        self.leader: str | None = NODES[0]
        self.lease_until: float | None = None  #: set while the leader's lease is running out
        self.isolated = {n: 0 for n in NODES}
        self.down = {n: 0 for n in NODES}
        self.recorded_outdated = {n: False for n in NODES}
        self.fencing: set[str] = set()
        self.switching: str | None = None
        self._was_outdated = False
        self.violations: list[Violation] = []
        self.outstanding: dict[str, set[Op]] = {n: set() for n in NODES}
        self.busy_blocks: set[int] = set()
        self.wid = 0
        self.acked: set[int] = set()
        self.origin: dict[int, str] = {}
        self.parent: dict[int, int] = {}  #: write -> the write it overwrote on its Primary
        self.acked_latest = [0] * NBLOCKS
        self.durable_acked = [0] * NBLOCKS
        self.seen: dict[str, set[int]] = {n: {0} for n in NODES}
        self.discard_ok: set[str] = set()
        self.stats = {"writes_acked": 0, "flushes": 0, "promotions": 0, "standalone": 0,
                      "operator_discards": 0, "resyncs": 0, "fences": 0, "failed_ops": 0, "al_flushes": 0,
                      "write_through_runs": int(self.write_through), "sealed_links": 0}
        self.heal = healed_at(faults)
        self.workload_until = self.heal + SETTLE / 2
        for f in faults:
            self.sim.at(f.at, self._fault_start, f)
            if f.duration > 0:
                self.sim.at(f.at + f.duration, self._fault_end, f)
        # created, connected and in sync; node1 is the leader and Primary
        self._record(NODES[0])
        self.reps[NODES[0]].promote(peer_outdated=self.recorded_outdated[NODES[1]])
        for n in NODES:
            self.sim.after(0.05, self.reps[n].tick)
        self.sim.after(0.0, self._dial)
        self.sim.after(AGENT_EVERY, self._agent)
        self.sim.after(0.01, self._app)

    # ------------------------------------------------------------------ plumbing
    def uuid(self) -> int:
        return self._uuid.getrandbits(64) or 1

    def nonce(self) -> bytes:
        return self._uuid.getrandbits(128).to_bytes(16, "big")

    def peer_of(self, node: str) -> str:
        return NODES[1] if node == NODES[0] else NODES[0]

    def violate(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, self.sim.now, detail))
        self.sim.log("CHECK", f"{kind}: {detail}")

    def protocol_error(self, node: str, reason: str) -> None:
        self.violate("protocol_error", f"{node}: {reason}")

    def _dial(self) -> None:
        """_connect_loop: node1 dials every 0.1 s while it has no link; node2 accepts unless
        it still holds a link (then it closes the new socket)."""
        a, b = self.reps[NODES[0]], self.reps[NODES[1]]
        if (a.alive and a.link is None and not a.standalone_reason and b.alive
                and not b.standalone_reason and not self.wire.partitioned):
            conn = self.wire.connect(NODES[0], NODES[1])
            a.attach(conn.a, True)
            if b.link is None:
                b.attach(conn.b, False)
            else:
                conn.b.close()
        self.sim.after(0.1, self._dial)

    # ------------------------------------------------------------------ the application
    def _app(self) -> None:
        now = self.sim.now
        if now < self.workload_until:
            node = self.leader
            rep = self.reps[node] if node else None
            if rep and rep.alive and rep.role is Role.PRIMARY and self.switching is None:
                mine = self.outstanding[node]
                writes = sum(1 for o in mine if o.kind == "write")
                if writes < MAX_WRITES:
                    free = [b for b in range(NBLOCKS) if b not in self.busy_blocks]
                    block = self.sim.rng.choice(free)
                    self.wid += 1
                    op = Op("write", self.wid, block, now)
                    self.origin[self.wid] = node
                    self.parent[self.wid] = self.durable[node].disk.view()[block]
                    self.busy_blocks.add(block)
                    mine.add(op)
                    rep.write(op)
                flushing = any(o.kind == "flush" for o in mine)
                # write-through: the loop device announces no volatile cache, so ext4 sends no
                # flushes; the application relies on completion alone
                if (not self.write_through and not flushing
                        and self.sim.rng.random() < WRITE_EVERY / FLUSH_EVERY):
                    op = Op("flush", 0, -1, now)
                    op.snapshot = {b: w for b, w in enumerate(self.acked_latest) if w}
                    mine.add(op)
                    rep.flush(op)
        self.sim.after(WRITE_EVERY * (0.5 + self.sim.rng.random()), self._app)

    def _target_keeps(self, node: str, block: int) -> bool:
        """`node` is a resync target that has the block still to receive, as its
        metadata says (what survives a crash): Inconsistent, bit set. The source
        clears its own bit once it sent the block (75d3c81), so a write whose ack
        waited for the fence can find the block sent, not yet applied, and no bit
        left on our side: the peer cannot be promoted and resyncs the block still
        (volume sim seed 920690)."""
        d = self.durable[node]
        if d.meta.disk is not DiskState.INCONSISTENT:
            return False
        saved = DirtyBitmap(SIZE, BLOCK)
        saved.load_raw(d.bitmap_raw)
        return saved.test(block)

    def op_done(self, rep: Replica, op: Op) -> None:
        if op not in self.outstanding[rep.node]:
            return
        self.outstanding[rep.node].discard(op)
        if op.kind == "write":
            self.busy_blocks.discard(op.block)
            self.acked.add(op.wid)
            self.stats["writes_acked"] += 1
            self.acked_latest[op.block] = max(self.acked_latest[op.block], op.wid)
            peer = self.reps[self.peer_of(rep.node)]
            # protocol C: the peer wrote it (to its page cache; a crash may lose it since)
            held = self.durable[peer.node].disk.view()[op.block]
            fenced = self.recorded_outdated[peer.node] and (rep.bitmap.test(op.block)
                                                           or self._target_keeps(peer.node, op.block))
            if op.wid not in self.seen[peer.node] and not fenced:
                self.violate("ack_unreplicated", f"write #{op.wid} (block {op.block}) acknowledged on"
                             f" {rep.node}; {peer.node} holds #{held} and is not fenced")
            if self.write_through:
                # completed means durable on both disks: the application never flushes
                if op.wid > self.durable_acked[op.block]:
                    self.durable_acked[op.block] = op.wid
                if self.check_at_ack:
                    self._check_durable(rep.node, op, "locally")
                    if op.wid in self.seen[peer.node] and not fenced:
                        self._check_durable(peer.node, op, "on the peer")
        else:
            self.stats["flushes"] += 1
            for b, w in op.snapshot.items():
                if w > self.durable_acked[b]:
                    self.durable_acked[b] = w

    def _check_durable(self, node: str, op: Op, where: str) -> None:
        stable = self.durable[node].disk.durable[op.block]
        if stable != op.wid:
            self.violate("ack_not_durable", f"write #{op.wid} (block {op.block}) acknowledged"
                         f" (write-through) but not durable {where}: {node}'s disk holds #{stable}")

    def op_failed(self, rep: Replica, op: Op, why: str) -> None:
        if op in self.outstanding[rep.node]:
            self.outstanding[rep.node].discard(op)
            self.stats["failed_ops"] += 1
            if op.kind == "write":
                self.busy_blocks.discard(op.block)

    def applied(self, node: str, wid: int, block: int) -> None:
        self.seen[node].add(wid)

    # ------------------------------------------------------------------ history checks
    def _lost(self, node: str) -> list[str]:
        view = self.durable[node].disk.view()
        return [f"block {b}: #{view[b]} instead of #{w}" for b, w in enumerate(self.durable_acked)
                if view[b] < w]

    def on_promote(self, rep: Replica, disk: DiskState, force: bool) -> None:
        self.stats["promotions"] += 1
        if disk is not DiskState.UP_TO_DATE and not force:
            self.violate("outdated_promoted", f"{rep.node} promoted with its disk {disk}")
        if self._was_outdated:
            self.violate("outdated_promoted", f"{rep.node} promoted while recorded Outdated")
        lost = self._lost(rep.node)
        if lost:
            what = "acknowledged" if self.write_through else "flushed"
            self.violate("lost_write", f"{rep.node} promoted without {what} writes: " + "; ".join(lost[:3]))

    def resync_started(self, target: Replica) -> None:
        self.stats["resyncs"] += 1
        source = self.peer_of(target.node)
        if target.role is Role.PRIMARY:  # it reads (and writes on) blocks not yet resynced
            self.violate("primary_sync_target", f"{target.node} is Primary and a resync target of"
                         f" {source}")
        view = self.durable[target.node].disk.view()
        have = self.durable[source].disk.view()
        unknown = sorted({w for b, w in enumerate(view) if w in self.acked and w not in self.seen[source]
                          and not self._descends(have[b], w)})
        if unknown:
            kind = "divergent_acked" if target.node in self.discard_ok else "split_brain_merged"
            self.violate(kind, f"resync {source} -> {target.node} overwrites acknowledged write(s)"
                         f" {unknown[:5]} that {source} never had")
        self.discard_ok.discard(target.node)

    def _descends(self, newer: int, older: int) -> bool:
        """`newer` was written over `older`, directly or through a chain of writes: the
        source's block already holds a successor of the target's (a crash reverted the
        target to `older`; a write that superseded it reached the source by resync, so the
        source never *saw* `older` and yet nothing acknowledged is lost)."""
        while newer > older:
            newer = self.parent.get(newer, 0)
        return newer == older

    def resync_done(self, target: Replica) -> None:
        pass

    def on_refused(self, rep: Replica, reason: str) -> None:
        self.stats["standalone"] += 1

    def discarding(self, rep: Replica) -> None:
        self.discard_ok.add(rep.node)

    # ------------------------------------------------------------------ the arbiter
    def start_fence(self, rep: Replica) -> None:
        self.stats["fences"] += 1
        self.sim.after(0.005, self._fence_try, rep, 1)

    def _fence_try(self, rep: Replica, attempt: int) -> None:
        if not rep.alive or rep is not self.reps[rep.node]:
            return
        if rep.role is not Role.PRIMARY:
            rep.fence_result(False)
            return
        node = rep.node
        if self.leader == node and not self.isolated[node]:
            self.recorded_outdated[self.peer_of(node)] = True
            self.sim.log(node, f"fence-peer: {self.peer_of(node)} recorded Outdated")
            rep.fence_result(True)
            return
        self.sim.after(min(1.0, 0.1 * attempt), self._fence_try, rep, attempt + 1)

    def _lose_lease(self, node: str) -> None:
        """The leader's host stopped renewing: write lease, then the leader lease, lapse."""
        if self.leader != node or self.lease_until is not None:
            return
        self.lease_until = self.sim.now + TTL
        self.sim.after(TTL - MARGIN, self._write_lease_expired, node)
        self.sim.after(TTL, self._lease_expired, node)

    def _write_lease_expired(self, node: str) -> None:
        rep = self.reps[node]
        if self.leader == node and self.lease_until is not None and rep.alive and rep.role is Role.PRIMARY:
            rep.suspend("the agent's write lease expired")
            self.sim.log(node, "write lease expired: I/O suspended")

    def _lease_expired(self, node: str) -> None:
        if self.leader == node and self.lease_until is not None:
            self.leader = None
            self.lease_until = None
            self.sim.log("arbiter", f"{node}'s leader lease expired")

    def _agent(self) -> None:
        for node in NODES:
            rep = self.reps[node]
            if not rep.alive:
                continue
            if rep.role is Role.PRIMARY and self.leader != node:
                self._fail_app(node)
                rep.demote(force=True)
        if self.switching is not None:
            self._switch_step()
        if self.leader is None:
            self._elect()
        node = self.leader
        if node is not None and not self.isolated[node] and self.lease_until is None:
            rep = self.reps[node]
            self._was_outdated = self.recorded_outdated[node]
            if rep.alive and (not self._was_outdated or self.variant == "promote_outdated"):
                self._record(node)
                if rep.role is Role.SECONDARY and self.switching is None:
                    err = rep.promote(peer_outdated=self.recorded_outdated[self.peer_of(node)])
                    if err:
                        self.sim.log(node, f"promotion refused: {err}")
        if self.sim.now > self.heal + 0.5:
            self._operator()
        self.sim.after(AGENT_EVERY, self._agent)

    def _record(self, leader: str) -> None:
        """_record_volume_state: the leader UpToDate; the peer UpToDate only while Connected to
        an UpToDate peer, else kept (or Outdated)."""
        rep, peer = self.reps[leader], self.peer_of(leader)
        link = rep.link
        ok = (link is not None and not link.closed and link.state is ConnectionState.CONNECTED
              and rep.peer_disk is DiskState.UP_TO_DATE)
        self.recorded_outdated[leader] = False
        if ok:
            self.recorded_outdated[peer] = False
        else:
            self.recorded_outdated[peer] = True

    def _elect(self) -> None:
        cands = []
        for node in NODES:
            rep = self.reps[node]
            if not rep.alive or self.isolated[node]:
                continue
            if self.variant != "promote_outdated" and (rep.meta.disk is not DiskState.UP_TO_DATE
                                                       or self.recorded_outdated[node]):
                continue
            cands.append(node)
        if cands:
            self.leader = self.sim.rng.choice(cands)
            self.sim.log("arbiter", f"{self.leader} acquires the leader key")
            self._record(self.leader)

    def _switch_step(self) -> None:
        old = self.switching
        assert old is not None
        rep = self.reps[old]
        if self.leader != old or not rep.alive:
            self.switching = None
            return
        peer = self.reps[self.peer_of(old)]
        link = rep.link
        fit = (peer.alive and not self.recorded_outdated[peer.node] and peer.meta.disk is DiskState.UP_TO_DATE
               and link is not None and not link.closed and link.state is ConnectionState.CONNECTED)
        if not fit:
            self.switching = None  # decide(): the candidate is not in sync, no switchover
            self.sim.log("arbiter", "switchover cancelled: the candidate is not in sync")
            return
        if self.outstanding[old]:
            return  # the application is stopping: wait for its I/O
        if self.isolated[old] or self.lease_until is not None:
            # the handover goes through the DCS, which the leader cannot reach: wait (its
            # lease lapses and the switchover is cancelled, or it reaches the DCS again)
            return
        rep.demote()
        self.leader = self.peer_of(old)
        self.switching = None
        self.sim.log("arbiter", f"switchover: {self.leader} acquires the leader key")

    def _fail_app(self, node: str) -> None:
        """demote(force) stops the FUSE server: every request still open fails (ENOTCONN), also
        writes waiting for the peer's ack, which the replicator itself would complete *successfully*
        if the link dropped after the demotion (its fence hold applies only to a Primary).

        The application instance dies with it (the agent stops the resource group hard):
        the next one, on the new Primary, recovers from the disk as after a crash, so what
        it never flushed may be lost, like in ``_crash`` (seed 22768: the peer's host crash
        had lost an acknowledged, unflushed write; the new Primary is the reference)."""
        if self.reps[node].role is Role.PRIMARY:
            self.acked_latest = list(self.durable_acked)
        for op in list(self.outstanding[node]):
            if self.variant == "no_fuse_teardown" and op.state == "sent":
                continue  # the replicator alone: these complete when the link drops
            self.op_failed(self.reps[node], op, "ENOTCONN")

    def _operator(self) -> None:
        stuck = [n for n in NODES if self.reps[n].alive and self.reps[n].standalone_reason]
        if not stuck:
            return
        reason = self.reps[stuck[0]].standalone_reason
        for node in NODES:  # the victim: the node that is not the leader (whichever reported it)
            rep = self.reps[node]
            if rep.alive and self.leader is not None and self.leader != node and rep.role is Role.SECONDARY:
                self.stats["operator_discards"] += 1
                self.sim.log("operator", f"discard-my-data on {node} ({reason})")
                rep.set_discard_my_data()
                self.reps[self.peer_of(node)].standalone_reason = ""

    # ------------------------------------------------------------------ faults
    def _fault_start(self, f: Fault) -> None:
        self.sim.log("fault", f"start {f}")
        if f.kind == "crash" and f.node:
            self.down[f.node] += 1
            if self.down[f.node] == 1:
                self._crash(f.node)
        elif f.kind == "partition":
            self.wire.partition(True)
        elif f.kind == "reset":
            self.wire.reset_all("connection reset")
        elif f.kind == "slow":
            self.wire.extra = f.p
        elif f.kind == "isolate" and f.node:
            self.isolated[f.node] += 1
            self._lose_lease(f.node)
        elif f.kind == "switchover":
            node = self.leader
            peer = self.peer_of(node) if node else None
            if (node and peer and self.lease_until is None and self.reps[node].alive
                    and self.reps[peer].alive and not self.recorded_outdated[peer]
                    and self.reps[peer].meta.disk is DiskState.UP_TO_DATE):
                self.switching = node

    def _fault_end(self, f: Fault) -> None:
        self.sim.log("fault", f"end {f.kind}{' ' + f.node if f.node else ''}")
        if f.kind == "crash" and f.node:
            self.down[f.node] -= 1
            if self.down[f.node] == 0:
                self.wire.host_up(f.node)
                self.reps[f.node] = Replica(self, f.node, self.durable[f.node], self.variant)
                self.sim.after(0.05, self.reps[f.node].tick)
        elif f.kind == "partition":
            self.wire.partition(False)
        elif f.kind == "slow":
            self.wire.extra = 0.0
        elif f.kind == "isolate" and f.node:
            self.isolated[f.node] -= 1

    def _crash(self, node: str) -> None:
        rep = self.reps[node]
        if rep.role is Role.PRIMARY:
            # the application dies with its host: what it never flushed may be lost (block-device
            # semantics), even where the peer held it: a crashed Primary that returns before a
            # failover is the resync source of its activity-log extents
            self.acked_latest = list(self.durable_acked)
        rep.crash()
        self.wire.host_down(node)
        self.outstanding[node].clear()
        self.busy_blocks.clear()
        for ops in self.outstanding.values():
            self.busy_blocks.update(o.block for o in ops if o.kind == "write")
        if self.leader == node:
            self._lose_lease(node)

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        a, b = (self.reps[n] for n in NODES)
        problems = []
        for r in (a, b):
            if not r.alive:
                problems.append(f"{r.node} down")
            elif r.link is None or r.link.closed or r.link.state is not ConnectionState.CONNECTED:
                state = r.link.state if r.link and not r.link.closed else "no link"
                problems.append(f"{r.node} link {state}" + (f" ({r.standalone_reason})"
                                                            if r.standalone_reason else ""))
            elif r.meta.disk is not DiskState.UP_TO_DATE:
                problems.append(f"{r.node} disk {r.meta.disk}")
        if problems:
            self.violate("no_convergence", f"{SETTLE:g} s after the faults healed: " + ", ".join(problems))
        else:
            va, vb = (self.durable[n].disk.view() for n in NODES)
            diff = [i for i in range(NBLOCKS) if va[i] != vb[i]]
            if diff:
                self.violate("replicas_differ", f"blocks {diff[:6]} differ: " + ", ".join(
                    f"#{va[i]}/#{vb[i]}" for i in diff[:6]))
            for r, other in ((a, b), (b, a)):
                ps = r.peer_status
                if ps is None or ps.role is not other.role or ps.disk is not other.meta.disk:
                    seen = f"{ps.role}/{ps.disk}" if ps else "nothing"
                    self.violate("stale_peer_state", f"{r.node} sees {seen}, {other.node} is"
                                 f" {other.role}/{other.meta.disk}")
            leader = self.reps[self.leader] if self.leader else None
            if leader is None or leader.role is not Role.PRIMARY:
                self.violate("no_primary", f"{SETTLE:g} s after the faults healed: leader"
                             f" {self.leader}, {leader.role if leader else 'none'}")
        for n in NODES:
            lost = self._lost(n)
            if lost:
                self.violate("lost_write", f"{n} at the end: " + "; ".join(lost[:3]))

    def run(self) -> None:
        with self._variant_patch():
            self.sim.run(self.heal + SETTLE)
            self.finish()

    @contextlib.contextmanager
    def _variant_patch(self) -> Iterator[None]:
        """resync_wrong_direction: both nodes mirror the real sync decision (so they agree
        with each other, and both are wrong)."""
        if self.variant != "resync_wrong_direction":
            yield
            return
        orig = peer_mod.decide_sync
        peer_mod.decide_sync = lambda *a, **k: orig(*a, **k).mirror()
        try:
            yield
        finally:
            peer_mod.decide_sync = orig


def run(seed: int, faults: list[Fault] | None = None, variant: str = "none",
        cache: str | None = None, sealed: bool = False) -> Result:
    """One schedule; `cache` forces the cache mode (default: by the seed, see cache_of);
    `sealed`: see VolWorld."""
    faults = generate(seed) if faults is None else faults
    w = VolWorld(seed, faults, variant, cache, sealed)
    w.run()
    return Result(seed, faults, sorted(w.violations, key=lambda v: v.at), w.sim.trace,
                  w.stats["writes_acked"], w.stats["promotions"], w.sim.events, w.heal + SETTLE,
                  stats=dict(w.stats))
