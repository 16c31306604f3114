"""The replication link state machine, driven over a simulated lossless link."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.volume import peer as peer_mod
from tandem.volume import wire
from tandem.volume.auth import AuthFailed
from tandem.volume.bitmap import DirtyBitmap
from tandem.volume.genid import GenerationIds, SplitBrainPolicy, SyncOutcome
from tandem.volume.peer import (
    TRANSITIONS,
    Authenticated,
    Event,
    FlushCompleted,
    PeerConfig,
    PeerConnection,
    StateChanged,
    SyncDecided,
    TickAction,
    WritesAcked,
)
from tandem.volume.states import ConnectionState as CS
from tandem.volume.states import DiskState, Role
from tandem.volume.wire import (
    NEED_DATA,
    AckRange,
    BitmapChunk,
    Disconnect,
    Flush,
    FlushAck,
    LocalProtocolError,
    RemoteProtocolError,
    ResyncData,
    ResyncDataBatch,
    ResyncDone,
    ResyncRequest,
    ResyncRequests,
    StateExchange,
    Write,
    WriteAck,
)

SECRET = b"s3cret-shared-by-both-nodes"
SIZE = 64 << 20


def make(node: str, initiator: bool, secret: bytes = SECRET, **kw: object) -> PeerConnection:
    nonce = (node.encode() * 32)[:32]
    cfg = PeerConfig(node=node, secret=secret, nonce=nonce, initiator=initiator, **kw)
    return PeerConnection(cfg, now=0.0)


def status(
    role: Role = Role.SECONDARY,
    gen: GenerationIds = GenerationIds(10),
    *,
    disk: DiskState = DiskState.UP_TO_DATE,
    size: int = SIZE,
    weight: int = 0,
) -> StateExchange:
    return StateExchange(role, disk, gen, size, weight)


class Link:
    """Two peers joined by an in-order, lossless pipe; events are collected."""

    def __init__(self, a: PeerConnection, b: PeerConnection):
        self.a, self.b = a, b
        self.pipe: dict[int, bytearray] = {id(a): bytearray(), id(b): bytearray()}  # inbound
        self.events: dict[int, list[Event]] = {id(a): [], id(b): []}
        self.setup: dict[int, list[Event]] = {}

    def settle(self) -> None:
        """Set the events so far aside: tests then see only what follows."""
        self.setup, self.events = self.events, {id(self.a): [], id(self.b): []}

    def decided(self, p: PeerConnection) -> list[SyncDecided]:
        return [e for e in self.setup[id(p)] if isinstance(e, SyncDecided)]

    def other(self, p: PeerConnection) -> PeerConnection:
        return self.b if p is self.a else self.a

    def send(self, p: PeerConnection, msg: wire.Message) -> None:
        self.pipe[id(self.other(p))] += p.send(msg)

    def pump(self) -> None:
        """Deliver everything both ways until the link is quiet."""
        while True:
            for p in (self.a, self.b):
                self.pipe[id(self.other(p))] += p.data_to_send()
            if not any(self.pipe.values()):
                return
            for p in (self.a, self.b):
                data, self.pipe[id(p)] = bytes(self.pipe[id(p)]), bytearray()
                if data:
                    p.receive_bytes(data)
                self.drain(p)

    def drain(self, p: PeerConnection) -> None:
        while (ev := p.next_event()) is not NEED_DATA:
            self.events[id(p)].append(ev)

    def forge(self, sender: PeerConnection, *msgs: wire.Message) -> bytes:
        """Frames as `sender` would put them on the wire, past its state machine:
        what a buggy or hostile peer that holds the keys could send."""
        sealer = sender._sealer
        assert sealer is not None
        return b"".join(sealer.seal_frame(wire.encode(m)) for m in msgs)

    def take(self, p: PeerConnection, kind: type | tuple[type, ...] = object) -> list[Event]:
        evs = self.events[id(p)]
        picked = [e for e in evs if isinstance(e, kind)]
        self.events[id(p)] = [e for e in evs if not isinstance(e, kind)]
        return picked


def connected_pair(sa: StateExchange | None = None, sb: StateExchange | None = None, **kw: object) -> Link:
    """node1 (initiator, Primary) and node2, authenticated and exchanged."""
    link = Link(make("node1", True, **kw), make("node2", False, **kw))
    link.pump()
    link.send(link.a, sa or status(Role.PRIMARY))
    link.send(link.b, sb or status())
    link.pump()
    link.settle()
    return link


# --- handshake and decision ----------------------------------------------------


@pytest.mark.parametrize("a_first", [True, False])
def test_handshake_both_ways(a_first: bool) -> None:
    a, b = make("node1", a_first), make("node2", not a_first)
    assert a.state is CS.CONNECTING
    link = Link(a, b)
    link.pump()
    assert a.state is b.state is CS.WF_REPORT_PARAMS
    assert a.peer_node == "node2" and b.peer_node == "node1"
    assert link.take(a, Authenticated) == [Authenticated("node2")]
    assert link.take(b, StateChanged) == [
        StateChanged(CS.CONNECTING, CS.WF_REPORT_PARAMS, "authenticated node1")
    ]


def test_wrong_secret_poisons_both_sides_with_a_reason() -> None:
    a, b = make("node1", True), make("node2", False, secret=b"not the same secret")
    b.receive_bytes(a.data_to_send())
    b.next_event()  # NEED_DATA: b answered a's Hello
    a.receive_bytes(b.data_to_send())
    with pytest.raises(AuthFailed, match="does not match"):
        a.next_event()
    assert a.state is CS.PROTOCOL_ERROR
    with pytest.raises(AuthFailed):
        a.next_event()
    with pytest.raises(AuthFailed):
        a.send(status())
    bye = wire.FrameDecoder()
    bye.feed(a.data_to_send())
    msgs = []
    while (m := bye.next_event()) is not NEED_DATA:
        msgs.append(m)
    assert isinstance(msgs[-1], Disconnect) and "does not match" in msgs[-1].reason
    assert b"secret" not in repr(a).encode() and SECRET not in repr(a.config).encode()


def test_data_before_authentication_is_refused() -> None:
    a = make("node1", True)
    a.receive_bytes(wire.encode(Write(1, 0, b"x")))
    with pytest.raises(RemoteProtocolError):
        a.next_event()
    assert a.state is CS.PROTOCOL_ERROR


def test_auth_frames_are_automatic() -> None:
    a = make("node1", True)
    with pytest.raises(LocalProtocolError, match="automatically"):
        a.send(wire.Ping(1))


def test_in_sync_peers_become_connected() -> None:
    link = connected_pair()
    assert link.a.state is link.b.state is CS.CONNECTED
    (decided,) = link.decided(link.a)
    assert decided.decision.outcome is SyncOutcome.NO_SYNC and not decided.refused
    assert decided.peer == status()


def test_split_brain_goes_standalone_on_both_sides() -> None:
    link = connected_pair(
        status(Role.PRIMARY, GenerationIds(11, 10)), status(Role.SECONDARY, GenerationIds(12, 10))
    )
    assert link.a.state is link.b.state is CS.STANDALONE
    assert not link.a.state.may_reconnect
    for p in (link.a, link.b):
        (decided,) = link.decided(p)
        assert decided.refused and decided.decision.outcome is SyncOutcome.SPLIT_BRAIN
    with pytest.raises(LocalProtocolError, match="closed"):
        link.a.send(Write(1, 0, b"x"))


def test_size_mismatch_is_refused() -> None:
    link = connected_pair(status(Role.PRIMARY), status(size=SIZE * 2))
    assert link.a.state is CS.STANDALONE
    (decided,) = link.decided(link.b)
    assert "sizes differ" in decided.reason


def test_split_brain_policy_mismatch_is_refused_on_both_sides() -> None:
    """Different after-split-brain policies could let both sides keep their data:
    refused even when the data is in sync, and the reason names both policies."""
    sec, zero = SplitBrainPolicy.DISCARD_SECONDARY, SplitBrainPolicy.DISCARD_ZERO_CHANGES
    link = Link(make("node1", True, split_brain_policy=sec), make("node2", False, split_brain_policy=zero))
    link.pump()
    link.send(link.a, StateExchange(Role.PRIMARY, DiskState.UP_TO_DATE, GenerationIds(10), SIZE, 0,
                                    split_brain_policy=sec))
    link.send(link.b, StateExchange(Role.SECONDARY, DiskState.UP_TO_DATE, GenerationIds(10), SIZE, 0,
                                    split_brain_policy=zero))
    link.pump()
    link.settle()
    assert link.a.state is link.b.state is CS.STANDALONE
    (da,), (db,) = link.decided(link.a), link.decided(link.b)
    assert da.refused and db.refused
    assert "discard-secondary here, discard-zero-changes on the peer" in da.reason
    assert "discard-zero-changes here, discard-secondary on the peer" in db.reason


def test_status_must_announce_the_links_policy() -> None:
    a = make("node1", True, split_brain_policy=SplitBrainPolicy.DISCARD_SECONDARY)
    b = make("node2", False)
    link = Link(a, b)
    link.pump()
    with pytest.raises(LocalProtocolError, match="announces split-brain policy disconnect"):
        link.send(a, status(Role.PRIMARY))


def test_split_brain_resolved_by_the_shared_policy() -> None:
    sec = SplitBrainPolicy.DISCARD_SECONDARY

    def st_(role: Role, gen: GenerationIds, weight: int) -> StateExchange:
        return StateExchange(role, DiskState.UP_TO_DATE, gen, SIZE, weight, split_brain_policy=sec)

    link = connected_pair(st_(Role.PRIMARY, GenerationIds(11, 10), 3),
                          st_(Role.SECONDARY, GenerationIds(12, 10), 2), split_brain_policy=sec)
    assert link.a.state is CS.WF_BITMAP_S and link.b.state is CS.WF_BITMAP_T
    (da,), (db,) = link.decided(link.a), link.decided(link.b)
    assert not da.refused and da.decision.split_brain_resolved and db.decision.split_brain_resolved
    assert da.decision.outcome is SyncOutcome.SOURCE_BITMAP
    assert db.decision.outcome is SyncOutcome.TARGET_BITMAP
    assert "discard-secondary" in da.reason


def test_block_size_mismatch_is_refused() -> None:
    other = StateExchange(Role.SECONDARY, DiskState.UP_TO_DATE, GenerationIds(10), SIZE, 0, block_size=512)
    link = connected_pair(status(Role.PRIMARY), other)
    assert link.b.state is CS.STANDALONE
    assert "block sizes differ" in link.decided(link.a)[0].reason


def test_two_primaries_on_a_live_link_are_a_protocol_error() -> None:
    link = connected_pair()
    with pytest.raises(LocalProtocolError, match="while the peer is Primary"):
        link.b.send(status(Role.PRIMARY))  # node1 is Primary
    link2 = connected_pair()
    link2.a.send(status(Role.PRIMARY, weight=3))  # a plain status update is fine
    link2.a.receive_bytes(link2.forge(link2.b, status(Role.PRIMARY)))  # node2 claims Primary too
    with pytest.raises(RemoteProtocolError, match="peer became Primary"):
        link2.a.next_event()


def test_primary_is_never_a_sync_target() -> None:
    link = connected_pair(
        status(Role.PRIMARY, GenerationIds(10)), status(Role.SECONDARY, GenerationIds(11, 10))
    )
    assert link.a.state is CS.STANDALONE
    assert "Primary would become a sync target" in link.decided(link.a)[0].reason


def test_bitmap_resync_to_connected() -> None:
    a_bm, b_bm = DirtyBitmap(SIZE), DirtyBitmap(SIZE)
    a_bm.set_range(0, 3 * 4096)
    b_bm.set_range(1 << 20, 4096)  # e.g. a crashed secondary's own dirty bits
    link = connected_pair(
        status(Role.PRIMARY, GenerationIds(11, 10), weight=a_bm.weight),
        status(Role.SECONDARY, GenerationIds(10), weight=b_bm.weight),
    )
    a, b = link.a, link.b
    assert (a.state, b.state) == (CS.WF_BITMAP_S, CS.WF_BITMAP_T)
    for p, bm in ((a, a_bm), (b, b_bm)):
        chunks = list(bm.chunks(chunk_size=128))
        for i, (offset, piece) in enumerate(chunks):
            link.send(p, BitmapChunk(offset, piece, last=i == len(chunks) - 1))
    link.pump()
    assert (a.state, b.state) == (CS.SYNC_SOURCE, CS.SYNC_TARGET)
    for p, bm in ((a, a_bm), (b, b_bm)):  # both merge the other's bitmap
        for chunk in link.take(p, BitmapChunk):
            bm.or_bytes(chunk.offset, chunk.data)
    assert a_bm == b_bm and b_bm.weight == 4

    runs = list(b_bm.dirty_runs(max_length=8192))
    for offset, length in runs:
        link.send(b, ResyncRequest(offset, length))
    link.pump()
    with pytest.raises(LocalProtocolError, match="in flight"):
        b.send(ResyncDone())  # requests are still outstanding: misuse, poisons b
    assert b.state is CS.PROTOCOL_ERROR
    for req in link.take(a, ResyncRequest):
        link.send(a, ResyncData(req.offset, b"d" * req.length))
    assert (req.offset, req.length) == runs[-1]


def test_resync_answer_must_match_the_request() -> None:
    link = connected_pair(
        status(Role.PRIMARY, GenerationIds(11, 10)), status(Role.SECONDARY, GenerationIds(10))
    )
    a, b = link.a, link.b
    link.send(a, BitmapChunk(0, b"\x03", last=True))
    link.send(b, BitmapChunk(0, b"", last=True))
    link.pump()
    link.send(b, ResyncRequest(0, 8192))
    # the application keeps writing during the resync
    link.send(a, Write(a.allocate_seq(), 1 << 20, b"w" * 512))
    link.pump()
    (req,) = link.take(a, ResyncRequest)
    with pytest.raises(LocalProtocolError):
        a.send(ResyncData(req.offset, b"short"))  # does not answer the request
    assert a.state is CS.PROTOCOL_ERROR


def test_resync_completes() -> None:
    link = connected_pair(
        status(Role.PRIMARY, GenerationIds(11, 10)), status(Role.SECONDARY, GenerationIds(10))
    )
    a, b = link.a, link.b
    link.send(a, BitmapChunk(0, b"\x03", last=True))
    link.send(b, BitmapChunk(0, b"", last=True))
    link.pump()
    link.send(b, ResyncRequest(0, 8192))
    link.send(a, Write(a.allocate_seq(), 1 << 20, b"w" * 512))
    link.pump()
    (req,) = link.take(a, ResyncRequest)
    link.send(a, ResyncData(req.offset, b"d" * req.length))
    (write,) = link.take(b, Write)
    link.send(b, WriteAck(write.seq))
    link.pump()
    assert link.take(b, ResyncData) == [ResyncData(0, b"d" * 8192)]
    assert link.take(a, WritesAcked) == [WritesAcked((write.seq,))]
    assert a.resync_bytes == b.resync_bytes == 8192
    link.send(b, ResyncDone())
    link.pump()
    assert a.state is b.state is CS.CONNECTED
    assert link.take(a, ResyncDone) == [ResyncDone()]


# --- writes, acks and flushes ----------------------------------------------------


def test_secondary_may_not_write() -> None:
    link = connected_pair()
    with pytest.raises(LocalProtocolError, match="only a Primary"):
        link.b.send(Write(1, 0, b"x"))


def test_write_from_a_secondary_peer_is_a_remote_error() -> None:
    link = connected_pair()
    link.b.receive_bytes(link.forge(link.a, Write(1, 0, b"x")))  # pretend node1 were Secondary
    link.b.next_event()  # fine: node1 is Primary
    link.a.receive_bytes(link.forge(link.b, Write(1, 0, b"x")))  # node2 is Secondary
    with pytest.raises(RemoteProtocolError, match="not Primary"):
        link.a.next_event()


@pytest.mark.parametrize("bad", [
    Write(1, SIZE - 4096, b"x" * 8192),  # runs past the end
    Write(1, SIZE, b"x"),
    wire.ResyncRequest(SIZE, 4096),
    ResyncRequests(((0, 4096), (SIZE - 1, 4096))),
    wire.VerifyRequest(SIZE - 4096, 8192, 4096),
], ids=["write-across-end", "write-past-end", "resync-request", "resync-requests", "verify"])
def test_a_range_outside_the_volume_poisons_the_link(bad: wire.Message) -> None:
    """Written past the end it would grow the backing file; read past it, it comes back
    short, and a short read fails our disk."""
    if isinstance(bad, (wire.ResyncRequest, ResyncRequests)):  # the target asks the source
        link = _in_sync_target_state()
        sender, receiver = link.b, link.a
    else:
        link = connected_pair()
        sender, receiver = link.a, link.b
    receiver.receive_bytes(link.forge(sender, bad))
    with pytest.raises(RemoteProtocolError, match="outside the volume"):
        receiver.next_event()
    link = connected_pair()
    link.b.receive_bytes(link.forge(link.a, Write(1, SIZE - 4096, b"x" * 4096)))  # the last block: fine
    assert isinstance(link.b.next_event(), Write)


def test_flush_completes_only_after_earlier_writes_and_its_ack() -> None:
    link = connected_pair()
    a, b = link.a, link.b
    w1, w2, f3, w4 = (a.allocate_seq() for _ in range(4))
    link.send(a, Write(w1, 0, b"1"))
    link.send(a, Write(w2, 4096, b"2"))
    link.send(a, Flush(f3))
    link.send(a, Write(w4, 8192, b"4"))
    link.pump()
    assert [type(e) for e in link.take(b)] == [Write, Write, Flush, Write]
    # the peer's FlushAck arrives before the ack of w1 (another implementation
    # may batch acks separately): the flush must wait for w1
    a.receive_bytes(link.forge(b, WriteAck(w2), FlushAck(f3)))
    link.drain(a)
    assert link.take(a) == [WritesAcked((w2,))]
    assert a.pending_flushes == 1
    a.receive_bytes(link.forge(b, WriteAck(w1)))
    link.drain(a)
    assert link.take(a) == [WritesAcked((w1,)), FlushCompleted(f3)]
    assert a.in_flight_writes == 1 and a.pending_flushes == 0


def test_secondary_cannot_ack_a_flush_before_earlier_writes() -> None:
    link = connected_pair()
    a, b = link.a, link.b
    link.send(a, Write(1, 0, b"1"))
    link.send(a, Flush(2))
    link.pump()
    with pytest.raises(LocalProtocolError, match="before Write 1"):
        b.send(FlushAck(2))


@pytest.mark.parametrize(
    "bad",
    [WriteAck(9), AckRange(5, 9), FlushAck(1), wire.Pong(77)],
)
def test_acks_for_unknown_requests_poison_the_link(bad: wire.Message) -> None:
    link = connected_pair()
    a = link.a
    link.send(a, Write(1, 0, b"x"))
    link.pump()
    a.receive_bytes(link.forge(link.b, bad))
    with pytest.raises(RemoteProtocolError):
        a.next_event()
    assert a.state is CS.PROTOCOL_ERROR
    told = a.data_to_send()
    assert b"protocol error" not in told  # sealed: only the peer can read why
    link.b.receive_bytes(told)
    link.drain(link.b)
    [bye] = link.take(link.b, Disconnect)
    assert bye.reason.startswith("protocol error: "), bye
    with pytest.raises(RemoteProtocolError):
        a.send(Write(2, 0, b"y"))


def test_sequence_numbers_must_increase() -> None:
    link = connected_pair()
    link.send(link.a, Write(5, 0, b"x"))
    with pytest.raises(LocalProtocolError, match="not above"):
        link.a.send(Flush(5))


def test_illegal_message_for_the_state_poisons() -> None:
    link = connected_pair()
    link.a.receive_bytes(link.forge(link.b, ResyncData(0, b"x")))  # Connected: no resync
    with pytest.raises(RemoteProtocolError, match="ResyncData received in state Connected"):
        link.a.next_event()
    with pytest.raises(LocalProtocolError, match="ResyncRequest sent in state Connected"):
        link.b.send(ResyncRequest(0, 4096))
    assert link.b.state is CS.PROTOCOL_ERROR


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_reordered_batched_acks(data: st.DataObject) -> None:
    """Random writes and flushes; the secondary acks in a random order."""
    link = connected_pair()
    a, b = link.a, link.b
    kinds = data.draw(st.lists(st.sampled_from(["w", "w", "w", "f"]), min_size=1, max_size=25))
    sent: list[tuple[str, int]] = []
    for kind in kinds:
        seq = a.allocate_seq()
        link.send(a, Write(seq, 0, b"x") if kind == "w" else Flush(seq))
        sent.append((kind, seq))
    link.pump()
    received = link.take(b)
    writes = [e.seq for e in received if isinstance(e, Write)]
    flushes = [e.seq for e in received if isinstance(e, Flush)]
    assert writes == [s for k, s in sent if k == "w"]
    order = data.draw(st.permutations(writes))
    acked: set[int] = set()

    def ack_ready_flushes() -> None:  # as soon as the secondary may
        for f in list(flushes):
            if all(w in acked for w in writes if w < f):
                link.send(b, FlushAck(f))
                flushes.remove(f)

    ack_ready_flushes()
    i = 0
    while i < len(order):
        batch = order[i : i + data.draw(st.integers(1, 4))]
        i += len(batch)
        for msg in wire.coalesce_acks(batch):
            link.send(b, msg)
        acked.update(batch)
        ack_ready_flushes()
        link.pump()
    link.pump()
    got = link.take(a)
    acked_seen: set[int] = set()
    for ev in got:
        if isinstance(ev, WritesAcked):
            assert not acked_seen & set(ev.seqs)  # each write acked once
            acked_seen.update(ev.seqs)
        else:
            assert isinstance(ev, FlushCompleted)
            assert all(w in acked_seen for w in writes if w < ev.seq)
    assert acked_seen == set(writes)
    completed = [e.seq for e in got if isinstance(e, FlushCompleted)]
    assert sorted(completed) == [s for k, s in sent if k == "f"]
    assert a.in_flight_writes == a.pending_flushes == b.unacked_received_writes == 0


# --- time ----------------------------------------------------------------------


def test_ping_keeps_a_live_link_up() -> None:
    link = connected_pair(ping_interval=1.0, ping_timeout=2.0)
    a = link.a
    assert a.tick(0.0) == []  # the setup frames were heard "now"
    assert a.tick(0.5) == []
    assert a.tick(1.0) == [TickAction.SEND_PING]
    link.pump()  # b answers with a Pong
    assert a.tick(5.0) == []  # the pong was heard "now"
    assert a.tick(6.0) == [TickAction.SEND_PING]
    link.pump()
    assert a.tick(6.5) == []
    assert a.tick(100.0) == [TickAction.SEND_PING]
    assert a.state is CS.CONNECTED


def test_ping_timeout_declares_the_peer_dead() -> None:
    link = connected_pair(ping_interval=1.0, ping_timeout=2.0)
    a = link.a
    a.tick(0.0)
    assert a.tick(1.0) == [TickAction.SEND_PING]
    a.data_to_send()  # the ping is lost in a partition: no pong comes back
    assert a.tick(2.9) == []
    assert a.tick(3.0) == [TickAction.PEER_DEAD]
    assert a.state is CS.TIMEOUT and a.state.may_reconnect
    link.drain(a)
    assert link.take(a, StateChanged)[-1].new is CS.TIMEOUT
    assert a.tick(10.0) == []


def test_any_frame_counts_as_life() -> None:
    link = connected_pair(ping_interval=1.0, ping_timeout=2.0)
    a, b = link.a, link.b
    a.tick(0.0)
    assert a.tick(1.0) == [TickAction.SEND_PING]
    a.data_to_send()  # ping lost, but b keeps sending data
    b_status = status(Role.SECONDARY, weight=1)
    a.receive_bytes(b.send(b_status))
    link.drain(a)
    assert a.tick(2.0) == []
    assert a.tick(3.5) == []  # heard after the ping was sent
    assert a.state is CS.CONNECTED
    assert link.take(a, StateExchange) == [b_status]


def test_part_of_a_frame_counts_as_life_and_silence_does_not() -> None:
    """A large frame crossing a slow link takes longer than the ping timeout: its first
    bytes prove the peer alive (a resync at 4 Mbit/s timed out every half second)."""
    link = connected_pair(ping_interval=1.0, ping_timeout=2.0)
    a, b = link.a, link.b
    a.tick(0.0)
    assert a.tick(1.0) == [TickAction.SEND_PING]
    a.data_to_send()  # the pong will wait behind the data
    frame = b.send(status(Role.SECONDARY, weight=1))
    a.receive_bytes(frame[:5])  # not a whole frame yet
    assert a.next_event() is NEED_DATA
    assert a.tick(2.0) == []
    assert a.tick(3.9) == []  # ... and then nothing: dead one timeout after the last byte
    assert a.tick(4.0) == [TickAction.PEER_DEAD]


def test_the_driver_may_vouch_for_a_busy_peer() -> None:
    """The driver sees the peer's TCP take more of our data (its process reads): alive."""
    link = connected_pair(ping_interval=1.0, ping_timeout=2.0)
    a = link.a
    a.tick(0.0)
    assert a.tick(1.0) == [TickAction.SEND_PING]
    a.data_to_send()
    a.note_alive()
    assert a.tick(2.5) == []
    assert a.tick(4.4) == []  # the last sign of life was at 2.5; the ping still waits
    assert a.tick(4.5) == [TickAction.PEER_DEAD]


def test_a_frame_then_a_partition_still_ends_in_a_timeout() -> None:
    """A frame heard after our ping, then the network goes: the pong never comes, and
    the peer must be declared dead one timeout after the frame (it never was)."""
    link = connected_pair(ping_interval=1.0, ping_timeout=2.0)
    a, b = link.a, link.b
    a.tick(0.0)
    assert a.tick(1.0) == [TickAction.SEND_PING]
    a.data_to_send()  # lost
    a.receive_bytes(b.send(status(Role.SECONDARY, weight=1)))
    link.drain(a)
    assert a.tick(1.5) == []
    assert a.tick(3.4) == []
    assert a.tick(3.5) == [TickAction.PEER_DEAD]


def test_handshake_timeout() -> None:
    a = make("node1", True, handshake_timeout=5.0)
    assert a.tick(4.9) == []
    assert a.tick(5.0) == [TickAction.PEER_DEAD]
    assert a.state is CS.TIMEOUT


def test_send_failed_and_eof() -> None:
    link = connected_pair()
    link.a.send_failed()
    assert link.a.state is CS.NETWORK_FAILURE
    link.b.receive_bytes(b"")
    assert link.b.state is CS.NETWORK_FAILURE
    link.drain(link.b)
    assert "closed" in link.take(link.b, StateChanged)[-1].reason


def test_disconnect_message() -> None:
    link = connected_pair()
    link.send(link.a, Disconnect("switchover"))
    link.pump()
    assert link.a.state is link.b.state is CS.UNCONNECTED
    assert link.take(link.b, Disconnect) == [Disconnect("switchover")]


def test_transition_table_has_no_rows_for_terminal_states() -> None:
    for state in CS:
        assert (state in TRANSITIONS) != state.is_terminal


def test_online_verify_round_trip() -> None:
    link = connected_pair()
    a, b = link.a, link.b
    link.send(a, wire.VerifyRequest(0, 3 * 4096, 4096))
    link.pump()
    (req,) = link.take(b, wire.VerifyRequest)
    with pytest.raises(LocalProtocolError, match="answer no request"):
        PeerConnection.send(connected_pair().b, wire.VerifyDigests(0, (b"x",)))
    link.send(b, wire.VerifyDigests(req.offset, (b"d" * 32,) * 3))
    link.pump()
    assert link.take(a, wire.VerifyDigests) == [wire.VerifyDigests(0, (b"d" * 32,) * 3)]
    a.receive_bytes(link.forge(link.b, wire.VerifyDigests(0, (b"d" * 32,))))  # unsolicited
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def _in_sync_target_state() -> Link:
    link = connected_pair(
        status(Role.PRIMARY, GenerationIds(11, 10)), status(Role.SECONDARY, GenerationIds(10))
    )
    link.send(link.a, BitmapChunk(0, b"\x0f", last=True))
    link.send(link.b, BitmapChunk(0, b"", last=True))
    link.pump()
    return link


def test_batched_resync_completes() -> None:
    """Many ranges asked in one frame, small ones answered together in another,
    a large one alone: each range answered exactly once, then Connected."""
    link = _in_sync_target_state()
    a, b = link.a, link.b
    link.send(b, ResyncRequests(((0, 4096), (8192, 4096), (1 << 20, 65536))))
    link.pump()
    (reqs,) = link.take(a, ResyncRequests)
    assert reqs.ranges == ((0, 4096), (8192, 4096), (1 << 20, 65536))
    link.send(a, ResyncDataBatch(((8192, 4096), (0, 4096)), b"b" * 4096 + b"a" * 4096))
    link.send(a, ResyncData(1 << 20, b"c" * 65536))
    link.pump()
    assert link.take(b, ResyncDataBatch) == [
        ResyncDataBatch(((8192, 4096), (0, 4096)), b"b" * 4096 + b"a" * 4096)]
    assert a.resync_bytes == b.resync_bytes == 8192 + 65536
    link.send(b, ResyncDone())
    link.pump()
    assert a.state is b.state is CS.CONNECTED


def test_batched_resync_answers_must_match_requests() -> None:
    link = _in_sync_target_state()
    a, b = link.a, link.b
    link.send(b, ResyncRequests(((0, 4096), (8192, 4096))))
    link.pump()
    with pytest.raises(LocalProtocolError, match="answers no request"):
        a.send(ResyncDataBatch(((0, 4096), (4096, 4096)), bytes(8192)))  # 4096 never asked
    assert a.state is CS.PROTOCOL_ERROR


def test_a_batch_answering_no_request_is_the_peers_fault() -> None:
    link = _in_sync_target_state()
    b = link.b
    link.send(b, ResyncRequests(((0, 4096),)))
    link.pump()
    b.receive_bytes(link.forge(link.a, ResyncDataBatch(((0, 4096), (0, 4096)), bytes(8192))))
    with pytest.raises(RemoteProtocolError, match="answers no request"):
        b.next_event()  # the second range answers a request already answered


def test_duplicate_ranges_in_one_request_frame_are_refused() -> None:
    link = _in_sync_target_state()
    with pytest.raises(LocalProtocolError, match="already in flight"):
        link.b.send(ResyncRequests(((0, 4096), (0, 4096))))
    link2 = _in_sync_target_state()
    link2.a.receive_bytes(link2.forge(link2.b, ResyncRequests(((0, 4096), (0, 4096)))))
    with pytest.raises(RemoteProtocolError, match="duplicate"):
        link2.a.next_event()


def test_batched_resync_messages_only_while_resyncing() -> None:
    link = connected_pair(status(Role.PRIMARY, GenerationIds(10)), status(Role.SECONDARY, GenerationIds(10)))
    with pytest.raises(LocalProtocolError, match="ResyncRequests sent in state Connected"):
        link.b.send(ResyncRequests(((0, 4096),)))
    link.a.receive_bytes(link.forge(link.b, ResyncDataBatch(((0, 1),), b"x")))
    with pytest.raises(RemoteProtocolError, match="ResyncDataBatch received in state Connected"):
        link.a.next_event()


def test_an_authenticated_peer_cannot_queue_unbounded_verify_reads() -> None:
    """Each VerifyRequest is a read of up to 1 MiB on our receiver thread: a peer that
    sent them without waiting for answers queued reads without bound (52 bytes on the
    wire per MiB read), and a repeated offset was taken too, then made our own answer a
    protocol error (review 35)."""
    link = connected_pair()
    a, b = link.a, link.b
    a.receive_bytes(link.forge(b, wire.VerifyRequest(0, 4096, 4096), wire.VerifyRequest(0, 4096, 4096)))
    assert isinstance(a.next_event(), wire.VerifyRequest)
    with pytest.raises(RemoteProtocolError, match="duplicate VerifyRequest at 0"):
        a.next_event()
    link = connected_pair()
    a, b = link.a, link.b
    flood = [wire.VerifyRequest(i << 20, 1 << 20, 4096) for i in range(peer_mod.MAX_VERIFY_ASKED + 1)]
    a.receive_bytes(link.forge(b, *flood))
    for _ in range(peer_mod.MAX_VERIFY_ASKED):
        assert isinstance(a.next_event(), wire.VerifyRequest)
    with pytest.raises(RemoteProtocolError, match="VerifyRequests unanswered"):
        a.next_event()
    # Our own side: a second request at an offset whose answer has not come (an
    # aborted run's) is refused before it leaves; answered, the offset is free again.
    link = connected_pair()
    a, b = link.a, link.b
    link.send(a, wire.VerifyRequest(0, 4096, 4096))
    assert a.verify_in_flight == 1
    with pytest.raises(LocalProtocolError, match="already in flight"):
        PeerConnection.send(a, wire.VerifyRequest(0, 4096, 4096))
    link = connected_pair()
    a, b = link.a, link.b
    link.send(a, wire.VerifyRequest(0, 4096, 4096))
    link.pump()
    link.take(b, wire.VerifyRequest)
    link.send(b, wire.VerifyDigests(0, (b"d" * 32,)))
    link.pump()
    assert link.take(a, wire.VerifyDigests) and a.verify_in_flight == 0
    link.send(a, wire.VerifyRequest(0, 4096, 4096))


def test_an_authenticated_peer_cannot_ask_for_unbounded_resync_data() -> None:
    """The source queued every range asked of it: 2.5 MB of ResyncRequests asked for
    200 GiB of reads (review 35). What is asked and not yet answered is bounded; an
    answer makes room again."""
    link = _in_sync_target_state()
    a, b = link.a, link.b  # b asks, a answers
    per_frame = ResyncRequests(tuple((i * 4096, 1 << 20) for i in range(128)))  # 128 MiB
    a.receive_bytes(link.forge(b, per_frame))
    assert isinstance(a.next_event(), ResyncRequests)
    more = ResyncRequests(tuple((i * 4096, 1 << 20) for i in range(128, 256)))
    a.receive_bytes(link.forge(b, more))
    assert isinstance(a.next_event(), ResyncRequests)  # 256 MiB: the limit, not past it
    link = _in_sync_target_state()
    a, b = link.a, link.b
    a.receive_bytes(link.forge(b, per_frame, more, wire.ResyncRequest(4 << 20, 4096)))
    a.next_event()
    a.next_event()
    with pytest.raises(RemoteProtocolError, match="resync requests for more than 256 MiB"):
        a.next_event()
    link = _in_sync_target_state()
    a, b = link.a, link.b
    a.receive_bytes(link.forge(b, per_frame, more))
    a.next_event()
    a.next_event()
    PeerConnection.send(a, ResyncData(0, b"r" * (1 << 20)))  # answered: room for 1 MiB
    a.receive_bytes(link.forge(b, wire.ResyncRequest(4 << 20, 1 << 20)))
    assert isinstance(a.next_event(), wire.ResyncRequest)


def test_a_bitmap_chunk_outside_the_bitmap_is_a_protocol_error() -> None:
    """It reached the bitmap's own check, a ValueError in the receiver: a traceback
    logged as a crash, not the one line of a protocol error (review 35)."""
    bitmap_bytes = SIZE // 4096 // 8
    for chunk, ok in ((BitmapChunk(bitmap_bytes - 1, b"\x01", True), True),
                      (BitmapChunk(bitmap_bytes, b"\x01", True), False),
                      (BitmapChunk(1 << 40, b"\xff" * 10, True), False)):
        link = connected_pair(status(Role.PRIMARY, GenerationIds(11, 10)),
                              status(Role.SECONDARY, GenerationIds(10)))
        link.b.receive_bytes(link.forge(link.a, chunk))
        if ok:
            assert link.b.next_event() == chunk
        else:
            with pytest.raises(RemoteProtocolError, match="outside the"):
                link.b.next_event()
