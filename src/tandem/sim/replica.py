"""One node's replicated volume for the volume simulation: what is real, what is modelled.

**Real** (imported and run unchanged): the link state machine
``tandem.volume.peer.PeerConnection`` with its transition table, the mutual
authentication, the frame encoder/decoder of ``wire`` (every message really is
encoded to bytes, cut into TCP segments and decoded), the sync decision and the
generation-identifier updates of ``genid``, the ``DirtyBitmap`` (set on writes
without the peer, exchanged as ``BitmapChunk`` frames, walked by ``dirty_runs``
for resync requests) and the ``ActivityLog``; ``MetaState`` is the real
metadata record.

**Modelled** after ``tandem.volume.replicator.Replicator`` and ``link.Link``,
method by method, because they are threads and sockets: the write path (AL
touch and persist, flushing first when an extent with completed writes is
evicted, send Write or mark the bitmap, local write, wait for the peer's ack),
flush, promote (deferred while the handshake decides)/demote (flushing before
the AL is cleared)/suspend/resume, ``_on_link_closed`` (bitmap
marks for unacknowledged and unflushed writes, new generation, fence-peer hold),
``_fence_and_resume``, the resync source/target (windowed pull, periodic
persist, ResyncDone, finish), the connect loop (one side dials, the other
accepts unless it still has a link) and the tick loop. Each handler runs
atomically on simulated time, so races *between threads* of one process are not
explored; races between the two nodes and the network are.

**Storage**: data blocks hold write ids. A write goes to the page cache; a
flush (fdatasync) makes the cache durable; a crash keeps each unflushed block
with probability 1/2 (writeback may or may not have happened). ``MetaStore``'s
update is an atomic, fsynced replace of (MetaState, bitmap bytes): exactly what
survives a crash. The in-memory bitmap is lost with the process.

**Cache modes** (``VolumeSpec.write_through``, per world): write-back as above; with
write-through the Primary writes with RWF_DSYNC (durable when the write returns), sends
each Write with the durable flag, and the peer acknowledges it only once durable (a lone
Write in a receive batch durably at once, several with one fdatasync before the acks),
exactly as ``Replicator._on_events``/``_apply_write``/``_send_acks``; nothing is recorded
as unflushed, and AL evictions and demotions flush nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tandem.volume import genid, wire
from tandem.volume.bitmap import ActivityLog, ActivityLogFull, DirtyBitmap
from tandem.volume.meta import MetaState
from tandem.volume.peer import (
    Authenticated,
    FlushCompleted,
    PeerConfig,
    PeerConnection,
    StateChanged,
    SyncDecided,
    TickAction,
    WritesAcked,
)
from tandem.volume.states import ConnectionState, DiskState, Role

if TYPE_CHECKING:
    from tandem.sim.tcp import End
    from tandem.sim.volworld import VolWorld

BLOCK = 64  #: bytes per block (and per dirty-bitmap bit): small, so a run stays cheap
NBLOCKS = 24
SIZE = BLOCK * NBLOCKS
EXTENT = 4 * BLOCK  #: activity-log extent
AL_SLOTS = 3
GRAIN = 2 * BLOCK  #: replicator.UNFLUSHED_GRAIN, scaled like the blocks
RESYNC_CHUNK = 4 * BLOCK
RESYNC_WINDOW = 4
PING_TIMEOUT = 1.0  #: spec.ping_timeout
LATE_BY = 0.005  #: variant late_automatic_frames: how much later the taken-out frames go
SECRET = b"simulated shared secret for the replication link"
WRITABLE_LINK = frozenset({ConnectionState.CONNECTED, ConnectionState.SYNC_SOURCE,
                           ConnectionState.SYNC_TARGET, ConnectionState.WF_BITMAP_S,
                           ConnectionState.WF_BITMAP_T})
HANDSHAKING = frozenset({ConnectionState.CONNECTING, ConnectionState.WF_REPORT_PARAMS})


def block_bytes(wid: int) -> bytes:
    return wid.to_bytes(8, "big") * (BLOCK // 8)


class Disk:
    """Durable blocks plus a page cache; survives the process, not the cache on a crash."""

    def __init__(self) -> None:
        self.durable = [0] * NBLOCKS
        self.cache: dict[int, int] = {}

    def view(self) -> list[int]:
        out = list(self.durable)
        for b, w in self.cache.items():
            out[b] = w
        return out

    def pwrite(self, offset: int, data: bytes, durable: bool = False) -> None:
        """Into the page cache; with `durable` (RWF_DSYNC, or O_DIRECT + RWF_DSYNC) on
        stable storage when it returns, and no longer dirty in the cache."""
        for i in range(0, len(data), BLOCK):
            b, w = (offset + i) // BLOCK, int.from_bytes(data[i:i + 8], "big")
            if durable:
                self.durable[b] = w
                self.cache.pop(b, None)
            else:
                self.cache[b] = w

    def pread(self, offset: int, length: int) -> bytes:
        v = self.view()
        return b"".join(block_bytes(v[b]) for b in range(offset // BLOCK, (offset + length) // BLOCK))

    def flush(self) -> None:
        for b, w in self.cache.items():
            self.durable[b] = w
        self.cache.clear()

    def crash(self, rng: Any) -> None:
        for b, w in sorted(self.cache.items()):
            if rng.random() < 0.5:
                self.durable[b] = w
        self.cache.clear()


class Durable:
    """What survives the volume process: the disk and the metadata file."""

    def __init__(self, node: str, ids: genid.GenerationIds):
        self.disk = Disk()
        self.meta = MetaState(node=node, size=SIZE, block_size=BLOCK, disk=DiskState.UP_TO_DATE,
                              generations=ids, al_slots=AL_SLOTS, al_extent_size=EXTENT)
        self.bitmap_raw = DirtyBitmap(SIZE, BLOCK).raw


class Op:
    """An application write or flush in progress (the FUSE request)."""

    __slots__ = ("kind", "wid", "block", "started", "state", "peer_done", "local_done", "seq", "registered",
                 "snapshot", "mark")

    def __init__(self, kind: str, wid: int = 0, block: int = -1, started: float = 0.0):
        self.kind, self.wid, self.block, self.started = kind, wid, block, started
        self.state = "new"  # new | waiting_io | sent | done | failed
        self.peer_done = False
        self.local_done = False
        self.seq = 0
        self.registered = False
        self.snapshot: dict[int, int] = {}
        self.mark = -1  #: a flush: writes_ended when it started


class SimLink:
    """link.Link without threads: one PeerConnection on one TCP end."""

    def __init__(self, rep: Replica, end: End, initiator: bool):
        self.rep, self.end = rep, end
        cfg = PeerConfig(node=rep.node, secret=SECRET, nonce=rep.world.nonce(), initiator=initiator,
                         ping_interval=PING_TIMEOUT / 4, ping_timeout=PING_TIMEOUT * 0.6,
                         handshake_timeout=max(5.0, 4 * PING_TIMEOUT), split_brain_policy=rep.policy,
                         seal_frames=rep.world.sealed)  # off by default: see VolWorld
        self.peer = PeerConnection(cfg, now=rep.sim.now)
        self.closed = False
        self.close_reason = ""
        end.on_bytes = self._on_bytes

    @property
    def state(self) -> ConnectionState:
        return self.peer.state

    def start(self) -> None:
        self._send_raw(self.peer.data_to_send())

    def send(self, msg: wire.Message, register: Any = None) -> None:
        """Raises ConnectionError or ProtocolError like Link.send; `register` runs once the
        state machine accepted the message, before the bytes go out."""
        if self.closed:
            raise ConnectionError(f"link closed: {self.close_reason}")
        try:
            parts = self.peer.send_parts(msg)
        except wire.ProtocolError as e:
            self.rep.world.protocol_error(self.rep.node, f"local: {e.reason}")
            raise
        if register is not None:
            register()
        self._send_raw(b"".join(bytes(p) for p in parts))

    def send_many(self, msgs: list[wire.Message]) -> None:
        for m in msgs:
            self.send(m)

    def _send_raw(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError(f"link closed: {self.close_reason}")
        if not data:
            return
        try:
            self.end.send(data)
        except OSError as e:
            self.peer.send_failed()
            self.close(f"send failed: {e}")
            raise ConnectionError(str(e)) from None

    def _on_bytes(self, data: bytes) -> None:
        if self.closed or not self.rep.alive:
            return
        events = []
        try:
            self.peer.receive_bytes(data)
            while (ev := self.peer.next_event()) is not wire.NEED_DATA:
                events.append(ev)
            auto = self.peer.data_to_send()  # taken out (sealed) now: sent now
        except wire.ProtocolError as e:
            self.rep.world.protocol_error(self.rep.node, f"remote: {e.reason}")
            with contextlib.suppress(OSError):
                self.end.send(self.peer.data_to_send())
            self.close(f"protocol error: {e.reason}")
            return
        late = self.rep.variant == "late_automatic_frames"  # BROKEN: see volworld
        if auto and not late:
            with contextlib.suppress(ConnectionError):
                self._send_raw(auto)
        if events:
            self.rep.on_events(self, events)
        if auto and late:  # another thread's frames may go out in between
            self.rep.sim.after(LATE_BY, self._send_late, auto)
        if self.closed:
            return
        if self.peer.state.is_terminal:
            reason = f"link ended: {self.peer.state}"
            for ev in events:
                if isinstance(ev, wire.Disconnect):
                    reason = f"peer disconnected: {ev.reason}"
            self.close(reason)
        elif not data:
            self.close("peer closed the connection")

    def _send_late(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            self._send_raw(data)

    def tick(self, now: float) -> None:
        if self.closed:
            return
        actions = self.peer.tick(now)
        if TickAction.PEER_DEAD in actions:
            self.close("peer did not answer")
        elif TickAction.SEND_PING in actions:
            with contextlib.suppress(ConnectionError):
                self._send_raw(self.peer.data_to_send())

    def disconnect(self, reason: str) -> None:
        with contextlib.suppress(ConnectionError, wire.ProtocolError):
            self.send(wire.Disconnect(reason[: wire.MAX_REASON]))
        self.close(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.end.close()
        self.rep.on_link_closed(self, reason)


class Replica:
    """replicator.Replicator on simulated time (see the module docstring)."""

    def __init__(self, world: VolWorld, node: str, durable: Durable, variant: str = "none"):
        self.world, self.node, self.durable, self.variant = world, node, durable, variant
        self.sim = world.sim
        self.write_through = world.write_through  #: VolumeSpec.write_through (config `cache`)
        self.alive = True
        self.policy = genid.SplitBrainPolicy.DISCONNECT
        self.disk = durable.disk
        self.bitmap = DirtyBitmap(SIZE, BLOCK)
        self.bitmap.load_raw(durable.bitmap_raw)
        st = durable.meta
        self.crashed_primary = st.primary
        self.al = ActivityLog(AL_SLOTS, EXTENT)
        if self.crashed_primary:
            ranges = ActivityLog(AL_SLOTS, EXTENT, st.al_extents).ranges(SIZE)
            for off, n in ranges:
                self.bitmap.set_range(off, n)
            self.meta_update(primary=False, al_extents=())
            self.log(f"crashed while Primary: {len(ranges)} activity-log extents marked for resync")
        self.role = Role.SECONDARY
        self.io_open = True
        self.held_by_operator = False
        self.fencing: tuple[list[Op], list[Op]] | None = None
        self.link: SimLink | None = None
        self.standalone_reason = ""
        self.peer_status: wire.StateExchange | None = None
        self.peer_disk: DiskState | None = DiskState.OUTDATED if st.peer_outdated else None
        self.discard_my_data = False
        self.lost_leadership = False
        self.pending_writes: dict[int, Op] = {}
        self.pending_flushes: dict[int, Op] = {}
        self.unflushed: dict[int, int] = {}
        self.unsynced = False  # receiver: durable Writes applied, not yet fdatasync'ed
        self.blocked: list[Op] = []  # waiting on io_open
        self.rs_target_started = False
        self.pull: dict[str, Any] | None = None
        self.writes_ended = 0  # _writes_ended
        self.durable_mark = -1  # _durable_mark: writes_ended when the last good flush started
        self.extent_ended: dict[int, int] = {}  # AL extent -> writes_ended at its last write
        self.evict_flush: Op | None = None  # the flush an AL eviction waits for
        self.last_persist = self.sim.now
        #: MetaStore.clear_written: (number, offset, length) of resync data written and
        #: not yet flushed, whose bits every metadata write sets again
        self.undurable: list[tuple[int, int, int]] = []
        self.undurable_seq = 0

    # ------------------------------------------------------------------ helpers
    @property
    def meta(self) -> MetaState:
        return self.durable.meta

    def meta_update(self, **changes: Any) -> None:
        """MetaStore.update: fields and the bitmap as it is now, atomically and durably."""
        self.durable.meta = replace(self.durable.meta, **changes)
        undurable = getattr(self, "undurable", ())  # (none yet while __init__ replays a crash)
        if not undurable:
            self.durable.bitmap_raw = self.bitmap.raw
            return
        saved = DirtyBitmap(SIZE, BLOCK)
        saved.load_raw(self.bitmap.raw)
        for _, off, n in undurable:
            saved.set_range(off, n)
        self.durable.bitmap_raw = saved.raw

    def flush_resync_data(self) -> None:
        """The target's fdatasync: every clear noted before it is durable now."""
        mark = self.undurable_seq
        self.disk.flush()
        self.undurable = [u for u in self.undurable if u[0] > mark]

    def log(self, what: str) -> None:
        self.sim.log(self.node, what)

    def new_uuid(self) -> int:
        return self.world.uuid()

    # ------------------------------------------------------------------ block API
    def write(self, op: Op) -> None:
        """Replicator.write up to the wait; completes through _maybe_done."""
        if not self.alive:
            return
        if self.role is not Role.PRIMARY:
            self.world.op_failed(self, op, "EROFS")
            return
        if not self.io_open:
            op.state = "waiting_io"
            self.blocked.append(op)
            return
        try:
            victims = self.al.victims(op.block * BLOCK, BLOCK)
        except ActivityLogFull:
            self.sim.after(0.001, self.write, op)
            return
        if (not self.write_through and any(self.extent_ended.get(v, 0) > self.durable_mark for v in victims)
                and self.variant != "al_drop_unflushed"):
            # _al_touch: an extent leaves the log only once its writes are durable on
            # both disks; the writer flushes (here: waits for a flush) and tries again
            # (write-through: a completed write is durable on both already)
            f = self.evict_flush
            if f is None or f.state in ("done", "failed"):
                self.evict_flush = f = Op("flush", 0, -1, self.sim.now)
                self.world.stats["al_flushes"] += 1
                self.flush(f)
            self.sim.after(0.001, self.write, op)
            return
        new = self.al.touch(op.block * BLOCK, BLOCK)
        for v in victims:
            self.extent_ended.pop(v, None)
        if new:
            self.meta_update(al_extents=self.al.extents())
        link = self.writable_link()
        handshaking = self.link is not None and not self.link.closed and self.link.state in HANDSHAKING
        if link is None and handshaking and self.sim.now - op.started < 2.0:
            # _writable_link waits (up to 2 s) for the handshake's decision
            self.al.complete(op.block * BLOCK, BLOCK)
            self.sim.after(0.002, self.write, op)
            return
        data = block_bytes(op.wid)
        sent = False
        if link is not None:
            seq = link.peer.allocate_seq()
            op.seq = seq
            try:
                link.send(wire.Write(seq, op.block * BLOCK, data, self.write_through),
                          lambda: self.register_write(seq, op))
                sent = True
            except (ConnectionError, wire.ProtocolError):
                if op.registered:
                    sent = True  # on_link_closed took care of it (bitmap, fence)
                else:
                    self.bitmap.set_range(op.block * BLOCK, BLOCK)
        if link is None:
            self.bitmap.set_range(op.block * BLOCK, BLOCK)
        # BROKEN variant wt_no_local_sync: the local write without RWF_DSYNC
        self.disk.pwrite(op.block * BLOCK, data, self.write_through and self.variant != "wt_no_local_sync")
        self.world.applied(self.node, op.wid, op.block)
        op.local_done = True
        op.state = "sent"
        if not sent:
            op.peer_done = True
        if self.variant == "ack_before_peer":  # BROKEN: protocol A, the app sees the ack at once
            op.peer_done = True
        self._maybe_done(op)

    def register_flush(self, seq: int, op: Op) -> None:
        op.registered = True
        self.pending_flushes[seq] = op

    def register_write(self, seq: int, op: Op) -> None:
        op.registered = True
        self.pending_writes[seq] = op
        if self.write_through:
            return  # acknowledged means durable on the peer: nothing to redo
        for g in range(op.block * BLOCK // GRAIN, (op.block * BLOCK + BLOCK - 1) // GRAIN + 1):
            self.unflushed[g] = seq

    def _maybe_done(self, op: Op) -> None:
        if op.state == "sent" and op.local_done and op.peer_done:
            op.state = "done"
            if op.kind == "write":
                self._write_ended(op)
            elif op.mark > self.durable_mark:
                self.durable_mark = op.mark
            self.world.op_done(self, op)

    def _write_ended(self, op: Op) -> None:
        """write()'s finally: count it, unpin its AL extent, note when it ended."""
        self.writes_ended += 1
        self.al.complete(op.block * BLOCK, BLOCK)
        self.extent_ended[op.block * BLOCK // EXTENT] = self.writes_ended

    def flush(self, op: Op) -> None:
        if not self.alive:
            return
        if self.role is not Role.PRIMARY:
            self.disk.flush()
            op.state = "failed"
            self.world.op_failed(self, op, "EROFS")
            return
        if not self.io_open:
            op.state = "waiting_io"
            self.blocked.append(op)
            return
        op.mark = self.writes_ended
        link = self.writable_link()
        sent = False
        if link is not None:
            seq = link.peer.allocate_seq()
            try:
                link.send(wire.Flush(seq), lambda: self.register_flush(seq, op))
                sent = True
            except (ConnectionError, wire.ProtocolError):
                sent = op.registered
        self.disk.flush()
        op.local_done = True
        op.peer_done = not sent
        op.state = "sent"
        self._maybe_done(op)

    def writable_link(self) -> SimLink | None:
        link = self.link
        if link is None or link.closed:
            return None
        ps = self.peer_status
        usable = ps is not None and ps.disk.has_disk
        if link.state in WRITABLE_LINK and usable:
            return link
        return None

    def _release_blocked(self) -> None:
        blocked, self.blocked = self.blocked, []
        for op in blocked:
            if self.role is not Role.PRIMARY:
                op.state = "failed"
                self.world.op_failed(self, op, "EIO")
            elif op.kind == "write":
                self.write(op)
            else:
                self.flush(op)

    # ------------------------------------------------------------------ roles
    def promote(self, force: bool = False, peer_outdated: bool = False) -> str | None:
        """None, or why the volume refuses (VolumeError). Without a connection and
        with the peer not known Outdated, I/O waits for the fence-peer hook."""
        disk = self.meta.disk
        if self.role is Role.PRIMARY:
            return None
        if disk is not DiskState.UP_TO_DATE and not force and self.variant != "promote_outdated":
            return f"local disk is {disk}"
        ps, link = self.peer_status, self.link
        if (link is not None and not link.closed and link.state is ConnectionState.WF_REPORT_PARAMS
                and self.variant != "promote_in_handshake"):
            # promote() waits (under the status lock) for the decision our StateExchange,
            # sent as a Secondary of the old generation, leads to; the agent retries
            return "the connection handshake has not decided the resync direction yet"
        connected = link is not None and not link.closed and link.state in WRITABLE_LINK
        if connected and ps is not None and ps.role is Role.PRIMARY:
            return "peer is Primary"
        if link is not None and link.state in (ConnectionState.SYNC_TARGET, ConnectionState.WF_BITMAP_T):
            return "this node is a resync target"
        forced_new_data = disk is not DiskState.UP_TO_DATE or self.meta.generations.is_fresh
        changes: dict[str, Any] = {"primary": True, "disk": DiskState.UP_TO_DATE}
        if not connected or forced_new_data:
            changes["generations"] = genid.new_current(self.meta.generations, self.new_uuid())
        self.world.on_promote(self, disk, force)
        self.meta_update(**changes)
        if connected and forced_new_data and link is not None:
            link.disconnect("forced promotion: resynchronising from the new Primary")
            connected = False
        if not connected and peer_outdated:
            self.peer_disk = DiskState.OUTDATED
            self.meta_update(peer_outdated=True)
        if self.fencing is None:
            self.held_by_operator = False
            self.io_open = True
        self.role = Role.PRIMARY
        self.lost_leadership = False
        if not connected and self.peer_disk is not DiskState.OUTDATED:
            self.io_open = False
            self._begin_fence([], [])
        if connected:
            self.send_status()
        self.log(f"Primary (gen {self.meta.generations.current:x}, link"
                 f" {link.state if link and not link.closed else 'none'})")
        return None

    def suspend(self, reason: str) -> None:
        self.held_by_operator = True
        self.io_open = False

    def resume(self) -> None:
        self.held_by_operator = False
        self.io_open = True
        self._release_blocked()

    def demote(self, force: bool = False) -> None:
        if self.role is Role.SECONDARY:
            if force and self.fencing is None:
                self.held_by_operator = False
                self.io_open = True
            return
        if force:
            self.suspend("forced demotion")
            self.role = Role.SECONDARY
            self.fail_fenced_waiters()
            self.io_open = True
            self._release_blocked()  # they fail with EIO
            self.send_status()
            self._flush_both()
            self.meta_update(primary=False, al_extents=self._forget_idle_extents())
            self.send_status()
            self.log("Secondary (forced)")
            return
        # graceful: the application is stopped first (the world stops issuing I/O)
        self.role = Role.SECONDARY
        self.fail_fenced_waiters()
        self.held_by_operator = False
        self.io_open = True
        self._release_blocked()
        self._flush_both()
        self.meta_update(primary=False, al_extents=self._forget_idle_extents())
        self.send_status()
        self.log("Secondary")

    def _forget_idle_extents(self) -> tuple[int, ...]:
        """Replicator.demote: the log in memory is emptied with the one on disk
        (variant ``al_kept_after_demote`` keeps it: seed 314725's divergence)."""
        if self.variant == "al_kept_after_demote":  # BROKEN variant
            return ()
        return self.al.forget_idle()

    def _flush_both(self) -> None:
        """Replicator._flush_both before the AL is cleared: local fdatasync, and a Flush
        to the peer on a writable link (the real one waits for it, bounded; here the
        demotion goes on at once, the Flush still reaches the peer in order)."""
        if self.write_through:
            return  # every completed write is durable on both already
        if self.variant == "al_drop_unflushed":  # BROKEN variant: the AL forgets cached writes
            return
        self.disk.flush()
        link = self.writable_link()
        if link is not None:
            op = Op("flush", 0, -1, self.sim.now)
            op.state, op.local_done = "sent", True
            seq = link.peer.allocate_seq()
            with contextlib.suppress(ConnectionError, wire.ProtocolError):
                link.send(wire.Flush(seq), lambda: self.register_flush(seq, op))

    def set_discard_my_data(self) -> str | None:
        if self.role is Role.PRIMARY:
            return "refusing discard-my-data on the Primary"
        self.discard_my_data = True
        self.standalone_reason = ""
        if self.link is not None:
            self.link.disconnect("discard-my-data requested")
        return None

    # ------------------------------------------------------------------ link
    def status_msg(self) -> wire.StateExchange:
        st = self.meta
        return wire.StateExchange(role=self.role, disk=st.disk, generations=st.generations, size=SIZE,
                                  bitmap_weight=self.bitmap.weight, crashed_primary=self.crashed_primary,
                                  discard_my_data=self.discard_my_data,
                                  lost_leadership=self.lost_leadership, block_size=BLOCK)

    def send_status(self) -> None:
        link = self.link
        if link is not None and not link.closed and link.state not in HANDSHAKING:
            with contextlib.suppress(ConnectionError, wire.ProtocolError):
                link.send(self.status_msg())

    def attach(self, end: End, initiator: bool) -> None:
        link = SimLink(self, end, initiator)
        self.rs_target_started = False
        self.link = link
        with contextlib.suppress(ConnectionError):
            link.start()

    def on_events(self, link: SimLink, events: list) -> None:
        acks: list[int] = []
        flushes: list[int] = []
        # Durable Writes (_on_events): a lone one is written with RWF_DSYNC; several share
        # one fdatasync before their acks (_send_acks).
        alone = len(events) == 1
        self.unsynced = False
        for ev in events:
            if link is not self.link or not self.alive:
                return
            kind = type(ev)
            if kind is wire.Write:
                self._apply_write(ev, alone)
                self.world.applied(self.node, int.from_bytes(ev.data[:8], "big"), ev.offset // BLOCK)
                acks.append(ev.seq)
            elif kind is WritesAcked:
                for s in ev.seqs:
                    op = self.pending_writes.pop(s, None)
                    if op is not None:
                        op.peer_done = True
                        self._maybe_done(op)
            elif kind is FlushCompleted:
                op = self.pending_flushes.pop(ev.seq, None)
                self.unflushed = {g: s for g, s in self.unflushed.items() if s > ev.seq}
                if op is not None:
                    op.peer_done = True
                    self._maybe_done(op)
            elif kind is wire.Flush:
                flushes.append(ev.seq)
            elif kind is wire.ResyncData:
                self._apply_resync(link, ev)
            elif kind is wire.ResyncRequest:
                self.sim.after(0.0005, self._answer_resync, link, ev)
            else:
                self._send_acks(link, acks)
                acks = []
                self._on_control_event(link, ev)
        self._send_acks(link, acks)
        if flushes:
            self.disk.flush()
            with contextlib.suppress(ConnectionError, wire.ProtocolError):
                link.send_many([wire.FlushAck(s) for s in flushes])

    def _apply_write(self, ev: wire.Write, alone: bool) -> None:
        if self.variant == "wt_ack_before_durable":  # BROKEN: buffered, acked before durable
            self.disk.pwrite(ev.offset, ev.data)
        elif ev.durable and alone:
            self.disk.pwrite(ev.offset, ev.data, durable=True)  # pwrite_durable_direct
        else:
            self.disk.pwrite(ev.offset, ev.data)
            if ev.durable:
                self.unsynced = True

    def _send_acks(self, link: SimLink, acks: list[int]) -> None:
        if acks and self.unsynced:
            self.unsynced = False
            self.disk.flush()
        if acks:
            with contextlib.suppress(ConnectionError, wire.ProtocolError):
                link.send_many(wire.coalesce_acks(acks))

    def _on_control_event(self, link: SimLink, ev: Any) -> None:
        if isinstance(ev, Authenticated):
            with contextlib.suppress(ConnectionError, wire.ProtocolError):
                link.send(self.status_msg())
        elif isinstance(ev, SyncDecided):
            self.world.stats["sealed_links"] += link.peer.sealed
            self.peer_status = ev.peer
            self.peer_disk = ev.peer.disk
            if ev.refused:
                self.standalone_reason = ev.reason
                self.log(f"connection refused: {ev.reason} (StandAlone)")
                self.world.on_refused(self, ev.reason)
                return
            out = ev.decision.outcome
            self.log(f"connected: {out} ({ev.reason})")
            if self.meta.peer_outdated:
                self.meta_update(peer_outdated=False)  # the link says what the peer is now
            if out.is_target and out.is_full:
                self.bitmap.set_all()
            if out.is_source or out.is_target:
                self._send_bitmap(link)
            if self.discard_my_data and out.is_target:
                self.discard_my_data = False
                self.world.discarding(self)
            after = genid.disk_after_connect(ev.decision.same_data, self.meta.disk, ev.peer.disk)
            upgraded = after is not self.meta.disk
            if upgraded:
                self.meta_update(disk=after)  # same data as an UpToDate peer
            if upgraded or ev.local.role is not self.role:  # or demoted during the handshake
                self.send_status()
        elif isinstance(ev, StateChanged):
            if ev.new is ConnectionState.SYNC_SOURCE:
                self._start_source(link)
        elif isinstance(ev, wire.StateExchange):
            self.peer_status = ev
            self.peer_disk = ev.disk
            if (link.state is ConnectionState.SYNC_TARGET and not self.rs_target_started
                    and ev.generations.bitmap):
                self.rs_target_started = True
                self._start_target(link, ev)
        elif isinstance(ev, wire.BitmapChunk):
            self.bitmap.or_bytes(ev.offset, ev.data)
        elif isinstance(ev, wire.ResyncDone):
            self._finish_source()

    def _send_bitmap(self, link: SimLink) -> None:
        msgs: list[wire.Message] = [wire.BitmapChunk(off, data, False) for off, data in self.bitmap.chunks(2)]
        msgs.append(wire.BitmapChunk(0, b"", True))
        with contextlib.suppress(ConnectionError, wire.ProtocolError):
            link.send_many(msgs)

    def on_link_closed(self, link: SimLink, reason: str) -> None:
        if self.link is not link:
            return
        was_replicating = link.peer.decision is not None and not link.peer.decision.refused
        writes = list(self.pending_writes.values())
        flushes = list(self.pending_flushes.values())
        self.pending_writes.clear()
        self.pending_flushes.clear()
        if self.variant != "skip_bitmap_mark":  # BROKEN variant: forget what the peer may lack
            for op in writes:
                self.bitmap.set_range(op.block * BLOCK, BLOCK)
            for g in self.unflushed:
                self.bitmap.set_range(g * GRAIN, min(GRAIN, SIZE - g * GRAIN))
        self.unflushed.clear()
        fence = self.role is Role.PRIMARY and was_replicating and self.variant != "no_fence"
        if fence:
            self.io_open = False
        self.log(f"link lost: {reason} ({len(writes)} writes, {len(flushes)} flushes in flight)")
        if self.role is Role.PRIMARY and was_replicating:
            self.meta_update(generations=genid.new_current(self.meta.generations, self.new_uuid()))
        elif was_replicating:
            self.meta_update()
        self.link = None
        self.peer_status = None
        self.pull = None
        if fence:
            self._begin_fence(writes, flushes)
        else:
            for op in writes + flushes:
                op.peer_done = True
                self._maybe_done(op)

    def _begin_fence(self, writes: list[Op], flushes: list[Op]) -> None:
        """A fence still running hands its held writes to this one."""
        if self.fencing is not None:
            writes, flushes = self.fencing[0] + writes, self.fencing[1] + flushes
        self.fencing = (writes, flushes)
        self.world.start_fence(self)

    def fail_fenced_waiters(self) -> None:
        held, self.fencing = self.fencing, None
        if held is not None:
            for op in held[0] + held[1]:
                if op.state == "sent":
                    op.state = "failed"
                    if op.kind == "write":
                        self._write_ended(op)
                    self.world.op_failed(self, op, "EIO")

    def fence_result(self, ok: bool) -> None:
        """The end of _fence_and_resume (the retry loop is the world's)."""
        if not self.alive:
            return
        if not ok:
            self.fail_fenced_waiters()
            if self.role is not Role.PRIMARY:
                self.io_open = True
            return
        if self.fencing is None:
            return
        writes, flushes = self.fencing
        self.fencing = None
        self.peer_disk = DiskState.OUTDATED
        self.meta_update(peer_outdated=True)
        if not self.held_by_operator:
            self.io_open = True
        for op in writes + flushes:
            op.peer_done = True
            self._maybe_done(op)
        if self.io_open:
            self._release_blocked()

    # ------------------------------------------------------------------ resync
    def _start_source(self, link: SimLink) -> None:
        self.meta_update(generations=genid.start_resync_source(self.meta.generations, self.new_uuid()))
        with contextlib.suppress(ConnectionError, wire.ProtocolError):
            link.send(self.status_msg())

    def _answer_resync(self, link: SimLink, req: wire.ResyncRequest) -> None:
        if link.closed or link is not self.link or not self.alive:
            return
        try:
            link.send(wire.ResyncData(req.offset, self.disk.pread(req.offset, req.length)))
        except (ConnectionError, wire.ProtocolError):
            return
        if not link.closed:  # sent: a resync cut short resumes where it was
            self.bitmap.clear_range(req.offset, req.length)

    def _finish_source(self) -> None:
        self.bitmap.clear_all()
        self.peer_disk = genid.disk_after_resync(self.meta.disk)
        self.meta_update(generations=genid.finish_resync_source(self.meta.generations), peer_outdated=False)
        self.crashed_primary = False
        self.log("resync finished (source)")

    def _start_target(self, link: SimLink, source: wire.StateExchange) -> None:
        self.meta_update(generations=genid.start_resync_target(self.meta.generations,
                                                               source.generations.bitmap),
                         disk=DiskState.INCONSISTENT)
        self.world.resync_started(self)
        runs = list(self.bitmap.dirty_runs(max_length=RESYNC_CHUNK))
        self.pull = {"link": link, "source": source, "runs": runs, "i": 0, "out": 0}
        self.sim.after(0.0005, self._pull_step, link)

    def _pull_step(self, link: SimLink) -> None:
        p = self.pull
        if p is None or p["link"] is not link or link.closed or not self.alive:
            return
        runs = p["runs"]
        batch = []
        while p["i"] < len(runs) and p["out"] < RESYNC_WINDOW:
            batch.append(wire.ResyncRequest(*runs[p["i"]]))
            p["i"] += 1
            p["out"] += 1
        if batch:
            try:
                link.send_many(batch)
            except (ConnectionError, wire.ProtocolError):
                return
        if self.sim.now - self.last_persist > 1.0:
            self.last_persist = self.sim.now
            self.flush_resync_data()
            self.meta_update()
        if p["i"] >= len(runs) and p["out"] == 0:
            self._finish_target(link, p["source"])

    def _apply_resync(self, link: SimLink, ev: wire.ResyncData) -> None:
        self.disk.pwrite(ev.offset, ev.data)
        for i in range(0, len(ev.data), BLOCK):
            self.world.applied(self.node, int.from_bytes(ev.data[i:i + 8], "big"), (ev.offset + i) // BLOCK)
        self.undurable_seq += 1
        self.undurable.append((self.undurable_seq, ev.offset, len(ev.data)))
        self.bitmap.clear_range(ev.offset, len(ev.data))
        p = self.pull
        if p is not None and p["link"] is link:
            p["out"] -= 1
            if p["out"] == 0:
                self._pull_step(link)

    def _finish_target(self, link: SimLink, source: wire.StateExchange) -> None:
        self.pull = None
        self.flush_resync_data()
        try:
            link.send(wire.ResyncDone())
        except (ConnectionError, wire.ProtocolError):
            return
        self.bitmap.clear_all()
        self.meta_update(generations=genid.finish_resync_target(self.meta.generations,
                                                                source.generations.current),
                         disk=genid.disk_after_resync(source.disk))
        self.crashed_primary = False
        self.log("resync finished (target)")
        self.world.resync_done(self)
        self.send_status()

    # ------------------------------------------------------------------ loops
    def tick(self) -> None:
        """_tick_loop: link ticks and the periodic persist of a disconnected Primary."""
        if not self.alive:
            return
        if self.link is not None:
            self.link.tick(self.sim.now)
        if self.sim.now - self.last_persist > 1.0:
            self.last_persist = self.sim.now
            if self.link is None and self.role is Role.PRIMARY:
                self.meta_update()
        self.sim.after(0.05, self.tick)

    def crash(self) -> None:
        self.alive = False
        self.disk.crash(self.sim.rng)
        self.link = None
