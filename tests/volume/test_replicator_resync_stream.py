"""The sync source sends a slice frame by frame, each as soon as it is read (session
30). Two things that streaming must not change: a read error partway through a
slice sends nothing it could not read and keeps every bit of the slice, and an
application write to a block of the slice reaches the peer only after the frame
that carries the block (the range lock covers the whole slice, not one frame)."""

from __future__ import annotations

import socket
import threading
import time

from tandem.volume import wire
from tandem.volume.backing import BackingStore
from tandem.volume.genid import GenerationIds
from tandem.volume.meta import MetaStore
from tandem.volume.peer import PeerConnection
from tandem.volume.replicator import Replicator
from tandem.volume.spec import VolumeSpec
from tandem.volume.states import ConnectionState, DiskState, Role
from tests.volume.test_replicator_safety import (
    GEN,
    SECRET,
    _authenticated,
    _close,
    _pump,
)

SIZE = 8 << 20
RANGE = 32 << 10  # small ranges (below LARGE_RANGE): batched, ~31 per 1 MiB frame
RANGES = [(i * 2 * RANGE, RANGE) for i in range(96)]  # scattered: 3 MiB, 4 frames


def _source(tmp_path, role: Role) -> tuple[Replicator, object, PeerConnection, socket.socket]:
    """node1 ahead of the test's peer by the blocks of RANGES: the link reaches
    SyncSource and node1's resync source thread runs."""
    backing, meta = tmp_path / "node1.img", tmp_path / "node1.meta"
    BackingStore.create(backing, SIZE)
    MetaStore.create(meta, SIZE, "node1", disk=DiskState.UP_TO_DATE,
                     generations=GenerationIds(GEN)).close()
    spec = VolumeSpec(resource="r0", node="node1", peer="node2", size=SIZE, backing=backing,
                      metadata=meta, address="127.0.0.1", peer_address="127.0.0.1", port=1,
                      ping_timeout=2.0, resync_rate=None, fence_peer_command=None,
                      run_dir=tmp_path, secret_file=tmp_path / "secret")
    rep = Replicator(spec, SECRET)
    rep.role = role  # no FUSE file here (as in test_replicator_safety)
    for i, (off, n) in enumerate(RANGES):
        rep.store.pwrite(off, bytes([i + 1]) * n)
    with rep.meta_lock:
        rep.meta.update(generations=GenerationIds(GEN + 1, GEN))  # wrote since GEN
    with rep.io_lock:
        for off, n in RANGES:
            rep.bitmap.set_range(off, n)
    link, peer, theirs = _authenticated(rep)
    theirs.sendall(peer.send(wire.StateExchange(
        role=Role.SECONDARY, disk=DiskState.UP_TO_DATE, generations=GenerationIds(GEN),
        size=SIZE, bitmap_weight=0)))
    _pump(theirs, peer, lambda: peer.state is ConnectionState.WF_BITMAP_T)
    theirs.sendall(peer.send(wire.BitmapChunk(0, b"", last=True)))
    _pump(theirs, peer, lambda: link.state is ConnectionState.SYNC_SOURCE
          and peer.state is ConnectionState.SYNC_TARGET)  # both sides have taken the bitmaps
    source = threading.Thread(target=rep._source_loop, name="resync-source", daemon=True)
    source.start()
    rep._threads.append(source)
    return rep, link, peer, theirs


def _stop(rep: Replicator, theirs: socket.socket) -> None:
    rep._source_queue.put(None)
    for t in rep._threads:
        t.join(5)
    _close(rep, rep.link, theirs)


def _collect(sock: socket.socket, peer: PeerConnection, until, timeout: float = 10.0,
             events: list | None = None) -> list:
    """The peer's side: every ResyncDataBatch and Write in arrival order (Writes are
    acknowledged) until `until(events)` holds or the link ends."""
    events = [] if events is None else events
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, f"only {len(events)} events arrived"
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            break
        peer.receive_bytes(data)
        while (ev := peer.next_event()) is not wire.NEED_DATA:
            if isinstance(ev, wire.ResyncDataBatch | wire.Write):
                events.append(ev)
            if isinstance(ev, wire.Write):
                sock.sendall(peer.send(wire.WriteAck(ev.seq)))
        out = peer.data_to_send()
        if out:
            sock.sendall(out)
    return events


def _batches(events: list) -> list[wire.ResyncDataBatch]:
    return [e for e in events if isinstance(e, wire.ResyncDataBatch)]


def test_a_read_error_partway_through_a_slice_sends_nothing_unread_and_keeps_every_bit(tmp_path):
    rep, link, peer, theirs = _source(tmp_path, Role.SECONDARY)
    try:
        bad = RANGES[40]  # in the second frame
        rep.store.inject_errors([bad])
        theirs.sendall(peer.send(wire.ResyncRequests(tuple(RANGES))))
        events = _collect(theirs, peer, lambda ev: False)  # until node1 closes the link
        # Closed by the failed disk's handler or by the source itself, whichever came first.
        assert link.closed
        assert link.close_reason == "peer disk failed" \
            or link.close_reason.startswith("sync source cannot read"), link.close_reason
        sent = [r for b in _batches(events) for r in b.ranges]
        assert sent and bad not in sent, "a frame was sent with a range it could not read"
        assert sent == RANGES[:len(sent)], "frames out of order"
        for b in _batches(events):  # what was sent is what the disk holds
            pos = 0
            for off, n in b.ranges:
                i = RANGES.index((off, n))
                assert bytes(b.data[pos:pos + n]) == bytes([i + 1]) * n
                pos += n
        assert rep.store.failed is not None and rep.meta.state.disk is DiskState.FAILED
        # The whole slice stays dirty: the target only asked, and applied at most the
        # first frame; the next resync (from the peer's side, now) must cover it all.
        for off, n in RANGES:
            assert all(rep.bitmap.test(b) for b in range(off // 4096, (off + n) // 4096)), \
                f"a bit of {off}+{n} was cleared"
        assert rep.stats["resync_bytes_sent"] == 0
    finally:
        _stop(rep, theirs)


def test_an_application_write_to_a_block_of_the_slice_follows_the_frame_that_carries_it(
        tmp_path, monkeypatch):
    rep, link, peer, theirs = _source(tmp_path, Role.PRIMARY)
    first_sent, go_on = threading.Event(), threading.Event()
    real_send = link.send

    def send_then_pause(msg, register=None):
        token = real_send(msg, register)
        if isinstance(msg, wire.ResyncDataBatch) and not first_sent.is_set():
            first_sent.set()
            assert go_on.wait(10), "the test never let the slice go on"
        return token

    monkeypatch.setattr(link, "send", send_then_pause)
    inside = RANGES[70]  # in the third frame
    outside = (RANGES[70][0] + RANGE, 4096)  # between two ranges: not in the slice
    results: dict[str, object] = {}

    def write(name: str, off: int) -> None:
        try:
            rep.write(off, b"W" * 4096)
            results[name] = None
        except OSError as e:
            results[name] = e

    writers = []
    try:
        theirs.sendall(peer.send(wire.ResyncRequests(tuple(RANGES))))
        events = _collect(theirs, peer, lambda ev: len(_batches(ev)) == 1)
        assert first_sent.wait(5)
        for name, (off, _) in (("inside", inside), ("outside", (outside[0], 0))):
            t = threading.Thread(target=write, args=(name, off), daemon=True)
            t.start()
            writers.append(t)
        # The write outside the slice is not held by it; the one inside waits for the slice.
        _collect(theirs, peer, lambda ev: any(isinstance(e, wire.Write) for e in ev),
                 events=events)
        writers[1].join(5)
        assert results.get("outside") is None and "outside" in results
        assert "inside" not in results
        assert [e.offset for e in events if isinstance(e, wire.Write)] == [outside[0]]
        go_on.set()
        _collect(theirs, peer, lambda ev: sum(isinstance(e, wire.Write) for e in ev) == 2,
                 events=events)
        writers[0].join(5)
        assert results.get("inside") is None and "inside" in results
        order = [("w", e.offset) if isinstance(e, wire.Write) else ("b", e.ranges)
                 for e in events]
        carrying = next(i for i, (k, v) in enumerate(order) if k == "b" and inside in v)
        inside_write = order.index(("w", inside[0]))
        assert carrying < inside_write, order
        assert sum(len(b.ranges) for b in _batches(events)) == len(RANGES)
    finally:
        go_on.set()
        for t in writers:
            t.join(5)
        _stop(rep, theirs)
