"""The Primary's write path with a real Replicator and a real Link over TCP to a
PeerConnection the test drives: a write returns its FUSE worker once it is sent and
written locally, and completes (in the link's receiver thread) only when the peer's
acknowledgement arrives -- acknowledged = on both disks."""

from __future__ import annotations

import contextlib
import os
import threading
import time

from tandem.volume import wire
from tandem.volume.genid import GenerationIds
from tandem.volume.link import Link
from tandem.volume.peer import PeerConfig, PeerConnection
from tandem.volume.states import ConnectionState, DiskState, Role
from tests.volume.test_replicator_safety import (
    BLOCK,
    GEN,
    LINK_SECRET,
    SECRET,
    SIZE,
    _pump,
    _tcp_pair,
    make_replicator,
)


def connect_test_peer(rep, link: Link, theirs, peer: PeerConnection, their_role: Role) -> None:
    """Start `link` as `rep`'s and drive the test's side (`peer` on socket `theirs`)
    through the handshake until Connected, with the same generation (no resync)."""
    rep.link = link
    link.start()
    theirs.sendall(peer.data_to_send())
    _pump(theirs, peer, lambda: peer.peer_status is not None)
    same = wire.StateExchange(role=their_role, disk=DiskState.UP_TO_DATE,
                              generations=GenerationIds(GEN), size=SIZE, bitmap_weight=0,
                              crashed_primary=False, discard_my_data=False,
                              lost_leadership=False, block_size=BLOCK)
    theirs.sendall(peer.send(same))
    _pump(theirs, peer, lambda: peer.state is ConnectionState.CONNECTED)


def _linked_to_test_peer(tmp_path, dials: bool):
    """node1's Replicator and Link on one end of a TCP pair, the test's peer on the other."""
    rep = make_replicator(tmp_path)
    mine, theirs = _tcp_pair()
    link = Link(mine, rep._peer_config(dials), rep._on_events, rep._on_link_closed)
    peer = PeerConnection(PeerConfig(node="node2", secret=LINK_SECRET, nonce=os.urandom(16),
                                     initiator=not dials), now=time.monotonic())
    return rep, link, peer, theirs


def _connected_primary(tmp_path):
    rep, link, peer, theirs = _linked_to_test_peer(tmp_path, True)
    rep.role = Role.PRIMARY  # no FUSE file: the test calls write_async itself
    connect_test_peer(rep, link, theirs, peer, Role.SECONDARY)
    deadline = time.monotonic() + 5
    while rep._writable_link() is None:
        assert time.monotonic() < deadline, "the Primary never saw the link Connected"
        time.sleep(0.01)
    return rep, link, peer, theirs


def _receive_writes(sock, peer: PeerConnection, timeout: float = 5.0) -> list[wire.Write]:
    """The test's side of the link: the Writes that arrive (at least one)."""
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    writes: list[wire.Write] = []
    while not writes:
        assert time.monotonic() < deadline, "no Write arrived"
        try:
            peer.receive_bytes(sock.recv(1 << 16))
        except TimeoutError:
            continue
        while (ev := peer.next_event()) is not wire.NEED_DATA:
            if isinstance(ev, wire.Write):
                writes.append(wire.Write(ev.seq, ev.offset, bytes(ev.data), ev.durable))
    return writes


def _close(rep, link, theirs) -> None:
    link.disconnect("test over")
    theirs.close()
    rep.role = Role.SECONDARY
    rep.meta.close()
    rep.store.close()


def test_write_completes_in_the_receiver_only_after_the_peer_acks(tmp_path):
    rep, link, peer, theirs = _connected_primary(tmp_path)
    done: list = []
    completed = threading.Event()

    def complete(error):
        done.append((error, threading.current_thread().name))
        completed.set()

    try:
        data = bytearray(b"w" * BLOCK)
        rep.write_async(2 * BLOCK, memoryview(data), complete)
        data[:] = b"x" * BLOCK  # not used after write_async returned
        writes = _receive_writes(theirs, peer)
        assert writes[0].offset == 2 * BLOCK and writes[0].data == b"w" * BLOCK
        assert writes[0].durable  # write-through: the peer acks only once it is durable
        with open(rep.spec.backing, "rb") as f:  # the local half is done
            f.seek(2 * BLOCK)
            assert f.read(BLOCK) == b"w" * BLOCK
        assert not completed.wait(0.3), "completed before the peer acknowledged"
        assert rep.stats["writes"] == 0
        theirs.sendall(peer.send(wire.WriteAck(writes[0].seq)))
        assert completed.wait(5)
        assert done == [(None, "link-recv")]
        assert rep.stats["writes"] == 1 and rep.stats["replicated_writes"] == 1
        assert rep._writes_ended == 1 and not rep._pending_writes
        assert rep.al.in_flight() == 0
        assert rep.bitmap.weight == 0
    finally:
        _close(rep, link, theirs)


def test_a_lost_link_completes_the_write_and_marks_it_out_of_sync(tmp_path):
    rep, link, peer, theirs = _connected_primary(tmp_path)
    done: list = []
    completed = threading.Event()
    try:
        rep.write_async(5 * BLOCK, b"q" * BLOCK,
                        lambda error: (done.append(error), completed.set()))
        assert not completed.wait(0.3)
        theirs.close()  # the peer goes away without acknowledging (no fence-peer hook)
        assert completed.wait(5)
        assert done == [None]
        assert rep.bitmap.weight >= 1  # the next connect resyncs the block
        assert rep.stats["writes"] == 1 and not rep._pending_writes
    finally:
        _close(rep, link, theirs)


def test_the_daemons_link_seals_what_it_replicates(tmp_path):
    """The real Replicator's link config seals (a sealing peer decodes the Write;
    the bytes on the TCP stream do not show the data); an unsealing peer fails."""
    rep, link, peer, theirs = _connected_primary(tmp_path)
    try:
        assert rep._peer_config(True).seal_frames
        block = b"card 4111-1111-1111-1111 exp 12/29 ".ljust(BLOCK, b"#")
        rep.write_async(5 * BLOCK, memoryview(bytearray(block)), lambda error: None)
        raw = bytearray()
        theirs.settimeout(0.05)
        writes: list[wire.Write] = []
        deadline = time.monotonic() + 5
        while not writes:
            assert time.monotonic() < deadline, "no Write arrived"
            try:
                chunk = theirs.recv(1 << 16)
            except TimeoutError:
                continue
            raw += chunk
            peer.receive_bytes(chunk)
            while (ev := peer.next_event()) is not wire.NEED_DATA:
                if isinstance(ev, wire.Write):
                    writes.append(ev)
        assert bytes(writes[0].data) == block
        assert b"4111-1111" not in raw and b"#" * 64 not in raw
        plain = wire.FrameDecoder()  # read without the key: the header, and noise
        plain.feed(bytes(raw))
        got = plain.next_event()
        assert isinstance(got, wire.Write) and got.seq == writes[0].seq
        assert got.offset != 5 * BLOCK and block[:64] not in bytes(got.data)
    finally:
        _close(rep, link, theirs)


def test_an_ack_altered_on_the_way_closes_the_link_and_completes_nothing(tmp_path):
    """A frame changed in flight (here: a WriteAck with one bit flipped) ends the
    daemon's link with a clear reason; the write is not taken as on the peer."""
    rep, link, peer, theirs = _connected_primary(tmp_path)
    completed = threading.Event()
    try:
        rep.write_async(3 * BLOCK, memoryview(bytearray(b"a" * BLOCK)), lambda error: completed.set())
        [w] = _receive_writes(theirs, peer)
        frame = bytearray(peer.send(wire.WriteAck(w.seq)))
        frame[12] ^= 0x01  # the seq field of the header: authenticated, not encrypted
        theirs.sendall(bytes(frame))
        deadline = time.monotonic() + 5
        while not (link.closed and link.close_reason):  # (the flag is set first)
            assert time.monotonic() < deadline, "the link took the altered frame"
            time.sleep(0.01)
        assert "failed authentication" in link.close_reason, link.close_reason
        # The write ends by the link's loss, not by the ack: its block is out of sync,
        # for the next connect to resync. (`replicated_writes` counts writes sent.)
        assert completed.wait(5)
        assert rep.bitmap.weight >= 1
    finally:
        _close(rep, link, theirs)


def test_a_write_that_found_no_link_goes_to_a_link_that_sent_its_bitmap_meanwhile(tmp_path):
    """Torture 113:50: a write found no link (the old one lost), and before it marked its
    block in the bitmap, a new link exchanged bitmaps without that bit; the end of that
    resync cleared the bit, and the block differed between the disks for good. Now the
    write looks again and goes to the new link."""
    rep, link, peer, theirs = _connected_primary(tmp_path)
    looks = []
    real = rep._writable_link

    def writable_link():
        looks.append(1)
        if len(looks) == 1:  # the old link is gone; meanwhile a new one sends its bitmap
            with rep.io_lock:
                rep._bitmaps_sent += 1
            return None
        return real()

    rep._writable_link = writable_link
    completed = threading.Event()
    try:
        rep.write_async(3 * BLOCK, b"r" * BLOCK, lambda error: completed.set())
        writes = _receive_writes(theirs, peer)
        assert [(w.offset, bytes(w.data)) for w in writes] == [(3 * BLOCK, b"r" * BLOCK)]
        assert len(looks) == 2 and rep.stats["bitmap_writes"] == 0
        assert rep.bitmap.weight == 0  # nothing marked that a resync's end would clear
        theirs.sendall(peer.send(wire.WriteAck(writes[0].seq)))
        assert completed.wait(5)
    finally:
        _close(rep, link, theirs)


def test_a_write_with_no_link_and_no_new_bitmap_marks_its_block(tmp_path):
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY  # no link at all
    completed = threading.Event()
    try:
        rep.write_async(4 * BLOCK, b"s" * BLOCK, lambda error: completed.set())
        assert completed.wait(5)
        assert rep.stats["bitmap_writes"] == 1 and rep.bitmap.weight == 1
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


# --- a link closed by another thread while its receiver still holds a batch -------

def test_a_resync_done_taken_in_as_the_link_closed_keeps_the_blocks_the_close_marked(tmp_path):
    """The receiver takes a ResyncDone off the wire; before it finishes the resync, a
    ping timeout closes the link from the ticker, and the close handler marks the
    write the peer had not acknowledged. The end of the resync emptied the bitmap,
    that mark with it: the block never reached the peer."""
    rep, link, peer, theirs = _connected_primary(tmp_path)
    completed = threading.Event()
    try:
        rep.write_async(6 * BLOCK, b"d" * BLOCK, lambda error: completed.set())
        _receive_writes(theirs, peer)  # sent, never acknowledged
        link.close("no ping answer within 1.2 s (as the ticker would)")
        assert completed.wait(5) and rep.bitmap.weight == 1
        rep._on_control_event(link, wire.ResyncDone())  # the receiver, right after
        assert rep.bitmap.weight == 1
        assert list(rep.bitmap.dirty_runs(max_length=1 << 20)) == [(6 * BLOCK, BLOCK)]
    finally:
        _close(rep, link, theirs)


def _connected_secondary(tmp_path):
    rep, link, peer, theirs = _linked_to_test_peer(tmp_path, False)
    connect_test_peer(rep, link, theirs, peer, Role.PRIMARY)
    return rep, link, peer, theirs


def _backing_block(rep, offset: int) -> bytes:
    with open(rep.spec.backing, "rb") as f:
        f.seek(offset)
        return f.read(BLOCK)


def test_the_rest_of_a_batch_is_not_applied_once_the_link_closed(tmp_path):
    """A Write still in the receiver's batch when another thread closed the link is
    dropped: the Primary marked it, unacknowledged, for the next resync; applied
    late, it could land over what that resync wrote."""
    rep, link, peer, theirs = _connected_secondary(tmp_path)
    try:
        link.close("no ping answer within 1.2 s (as the ticker would)")
        rep._on_events(link, [wire.Write(7, 2 * BLOCK, b"o" * BLOCK, True)])
        assert _backing_block(rep, 2 * BLOCK) == bytes(BLOCK)
        assert rep.stats["writes"] == 0
    finally:
        _close(rep, link, theirs)


def test_the_next_link_waits_until_the_old_receiver_is_done_with_its_batch(tmp_path):
    """The old receiver is inside a slow pwrite when the ticker closes its link: no
    new link (whose resync that Write could overwrite) until it is out."""
    rep, link, peer, theirs = _connected_secondary(tmp_path)
    inside, release = threading.Event(), threading.Event()
    real = rep.store.pwrite_durable_direct

    def slow_pwrite(offset, data):
        inside.set()
        release.wait(10)
        real(offset, data)

    rep.store.pwrite_durable_direct = slow_pwrite
    rep._last_link = link  # as _connect_loop records it
    try:
        theirs.sendall(peer.send(wire.Write(peer.allocate_seq(), 2 * BLOCK, b"n" * BLOCK, True)))
        assert inside.wait(5), "the Write never reached the receiver"
        link.close("no ping answer within 1.2 s (as the ticker would)")
        assert not rep._old_receiver_ended()
        time.sleep(0.2)
        assert not rep._old_receiver_ended()
        release.set()
        deadline = time.monotonic() + 5
        while not rep._old_receiver_ended():
            assert time.monotonic() < deadline, "the old receiver never ended"
        assert rep._last_link is None
        assert _backing_block(rep, 2 * BLOCK) == b"n" * BLOCK  # it finished its pwrite
    finally:
        release.set()
        _close(rep, link, theirs)


def _wait_closed(link: Link, theirs, peer: PeerConnection) -> None:
    theirs.settimeout(0.05)
    deadline = time.monotonic() + 5
    while not (link.closed and link.close_reason):  # (the flag is set first)
        assert time.monotonic() < deadline, "the link stayed open"
        with contextlib.suppress(TimeoutError, OSError, wire.ProtocolError):
            peer.receive_bytes(theirs.recv(1 << 16))
            while peer.next_event() is not wire.NEED_DATA:
                pass
        with contextlib.suppress(OSError, wire.ProtocolError):
            theirs.sendall(peer.data_to_send())


def test_a_peer_with_the_clusters_own_secret_is_refused(tmp_path):
    """The volume's link authenticates with a secret bound to its cluster and resource:
    the cluster secret itself (what another volume's link would be redirected with,
    before its own derivation) does not get in."""
    rep = make_replicator(tmp_path)
    mine, theirs = _tcp_pair()
    link = Link(mine, rep._peer_config(True), rep._on_events, rep._on_link_closed)
    peer = PeerConnection(PeerConfig(node="node2", secret=SECRET, nonce=os.urandom(16),
                                     initiator=False), now=time.monotonic())
    rep.link = link
    try:
        link.start()
        # Its Hello is taken in before ours goes, so our proof goes with our Hello
        # (sent first, ours would fail on its proof before we sent any).
        _wait_closed(link, theirs, peer)
        assert link.close_reason.startswith("protocol error:") and "secret" in link.close_reason
        assert rep.peer_status is None
    finally:
        _close(rep, link, theirs)


def test_a_disconnect_before_authentication_is_shown_as_unverified(tmp_path):
    """Anyone on the network can send a Disconnect before the handshake is over: its
    text goes to the log and the status only labelled, and printable."""
    rep = make_replicator(tmp_path)
    mine, theirs = _tcp_pair()
    link = Link(mine, rep._peer_config(True), rep._on_events, rep._on_link_closed)
    stranger = PeerConnection(PeerConfig(node="node2", secret=b"x" * 32, nonce=os.urandom(16),
                                         initiator=False), now=time.monotonic())
    rep.link = link
    try:
        link.start()
        theirs.sendall(stranger.send(wire.Disconnect("split brain: run discard-my-data\non node1")))
        _wait_closed(link, theirs, stranger)
        assert link.close_reason == ("disconnected before authenticating (its reason, not verified:"
                                     " 'split brain: run discard-my-data?on node1')")
    finally:
        _close(rep, link, theirs)
