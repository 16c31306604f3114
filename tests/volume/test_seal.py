"""Frames after the handshake are sealed: what an attacker on the replication
network can do to them (alter, drop, repeat, reorder, replay from another
connection, inject) ends the link and reaches neither the state machine nor the
disk; and nobody on the way can read the data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.volume import wire
from tandem.volume.auth import Handshake
from tandem.volume.peer import PeerConfig, PeerConnection
from tandem.volume.seal import TAG_SIZE, Opener, Sealer
from tandem.volume.states import ConnectionState as CS
from tandem.volume.states import Role
from tandem.volume.wire import NEED_DATA, FrameDecoder, RemoteProtocolError, Write

from .strategies import messages
from .test_peer import SECRET, Link, connected_pair, status

KEY = bytes(range(16))


def sealed(sealer: Sealer, *msgs: wire.Message) -> bytes:
    return b"".join(sealer.seal_frame(wire.encode(m)) for m in msgs)


def decoder() -> FrameDecoder:
    dec = FrameDecoder()
    dec.open_with(Opener(KEY), TAG_SIZE)
    return dec


def decode_all(dec: FrameDecoder) -> list[wire.Message]:
    out = []
    while (m := dec.next_event()) is not NEED_DATA:
        out.append(m)
    return out


def _norm(m: wire.Message) -> object:
    if isinstance(m, Write | wire.ResyncData | wire.ResyncDataBatch):
        return (type(m), repr({k: bytes(v) if isinstance(v, memoryview) else v
                              for k, v in ((f, getattr(m, f)) for f in m.__slots__)}))
    return m


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_a_sealed_stream_cut_anywhere_decodes_to_the_same_messages(msgs, data) -> None:
    stream = sealed(Sealer(KEY), *msgs)
    dec = decoder()
    out: list[wire.Message] = []
    pos = 0
    while pos < len(stream):
        n = data.draw(st.integers(1, max(1, len(stream) - pos)))
        dec.feed(stream[pos:pos + n])
        out += decode_all(dec)
        pos += n
    assert [_norm(m) for m in out] == [_norm(m) for m in msgs]


def test_the_data_is_not_readable_on_the_wire() -> None:
    block = b"INSERT INTO accounts VALUES ('alice', 1000000)".ljust(4096, b".")
    frame = sealed(Sealer(KEY), Write(1, 8192, block))
    assert b"alice" not in frame and len(frame) == len(wire.encode(Write(1, 8192, block))) + TAG_SIZE
    [w] = decode_all(_fed(decoder(), frame))
    assert bytes(w.data) == block and w.offset == 8192


def _fed(dec: FrameDecoder, data: bytes) -> FrameDecoder:
    dec.feed(data)
    return dec


@pytest.mark.parametrize("where", ["header seq", "header flags", "offset", "data", "tag"])
def test_any_changed_bit_fails_and_poisons(where: str) -> None:
    frame = bytearray(sealed(Sealer(KEY), Write(7, 4096, b"x" * 4096)))
    at = {"header seq": 19, "header flags": 7, "offset": 21, "data": 2000, "tag": len(frame) - 1}[where]
    frame[at] ^= 0x01
    dec = _fed(decoder(), bytes(frame))
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        dec.next_event()
    assert dec.poisoned
    dec.feed(sealed(Sealer(KEY), Write(8, 0, b"y")))
    with pytest.raises(RemoteProtocolError):  # a stream that failed once is never trusted again
        dec.next_event()


def test_dropped_repeated_and_reordered_frames_fail() -> None:
    s = Sealer(KEY)
    f0, f1, f2 = (sealed(s, Write(i + 1, 0, b"z")) for i in range(3))
    for stream in (f0 + f2, f0 + f0, f1 + f0, f1):
        dec = _fed(decoder(), stream)
        with pytest.raises(RemoteProtocolError, match="failed authentication"):
            decode_all(dec)
    assert [m.seq for m in decode_all(_fed(decoder(), f0 + f1 + f2))] == [1, 2, 3]


def test_another_key_or_a_plain_frame_fails() -> None:
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        decode_all(_fed(decoder(), sealed(Sealer(bytes(16)), Write(1, 0, b"a"))))
    with pytest.raises(RemoteProtocolError):  # an unsealed frame: too short for a tag, or garbage
        decode_all(_fed(decoder(), wire.encode(wire.WriteAck(1))))
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        decode_all(_fed(decoder(), wire.encode(Write(1, 0, b"a" * 64))))


def test_the_length_limit_allows_exactly_the_tag_more() -> None:
    big = Write(1, 0, bytes(wire.MAX_DATA))
    assert isinstance(decode_all(_fed(decoder(), sealed(Sealer(KEY), big)))[0], Write)
    head = bytearray(wire.HEADER.pack(wire.MAGIC, wire.VERSION, 5, 0,
                                      wire.DEFAULT_MAX_PAYLOAD + TAG_SIZE + 1, 1))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        decode_all(_fed(decoder(), bytes(head)))


def test_keys_per_direction_match_across_the_two_sides_and_change_per_connection() -> None:
    def pair(na: bytes, nb: bytes) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        a = Handshake(secret=SECRET, node="node1", nonce=na, initiator=True)
        b = Handshake(secret=SECRET, node="node2", nonce=nb, initiator=False)
        b.receive(a.hello())
        a.receive(b.hello())
        return a.frame_keys(), b.frame_keys()

    (a_send, a_recv), (b_send, b_recv) = pair(b"A" * 32, b"B" * 32)
    assert a_send == b_recv and b_send == a_recv and a_send != a_send[::-1]
    assert len({a_send, a_recv}) == 2 and len(a_send) == 16
    (c_send, c_recv), _ = pair(b"A" * 32, b"C" * 32)  # a new connection: a new peer nonce
    assert {c_send, c_recv}.isdisjoint({a_send, a_recv})
    assert SECRET not in a_send + a_recv
    with pytest.raises(wire.ProtocolError, match="before the peer's Hello"):
        Handshake(secret=SECRET, node="n", nonce=b"N" * 16, initiator=True).frame_keys()


def test_repr_shows_no_key() -> None:
    assert KEY.hex() not in repr(Sealer(KEY)) + repr(Opener(KEY))
    assert str(KEY) not in repr(Sealer(KEY)) + repr(Opener(KEY))


# --- the live state machine --------------------------------------------------------------


def test_a_write_altered_on_the_way_never_reaches_the_secondary() -> None:
    link = connected_pair()
    a, b = link.a, link.b
    frame = bytearray(a.send(Write(a.allocate_seq(), 0, b"good" * 1024)))
    frame[40] ^= 0x80  # in the data
    b.receive_bytes(bytes(frame))
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        b.next_event()
    assert b.state is CS.PROTOCOL_ERROR and b.unacked_received_writes == 0


def test_an_injected_ack_does_not_complete_a_write() -> None:
    """Without sealing, an attacker acks a write the peer never got: the Primary
    tells the database the commit is safe on two disks when it is on one."""
    link = connected_pair()
    a = link.a
    seq = a.allocate_seq()
    a.send(Write(seq, 0, b"w"))  # never delivered
    a.receive_bytes(wire.encode(wire.WriteAck(seq)))  # as the attacker can make it: plain
    with pytest.raises(RemoteProtocolError):
        a.next_event()
    assert a.in_flight_writes == 1 and a.state is CS.PROTOCOL_ERROR


def test_frames_replayed_from_an_earlier_connection_fail() -> None:
    def fresh(nonce_b: bytes) -> Link:
        a = PeerConnection(PeerConfig(node="node1", secret=SECRET, nonce=b"1" * 32, initiator=True), now=0.0)
        b = PeerConnection(PeerConfig(node="node2", secret=SECRET, nonce=nonce_b, initiator=False), now=0.0)
        link = Link(a, b)
        link.pump()
        link.send(a, status(Role.PRIMARY))
        link.send(b, status())
        link.pump()
        link.settle()
        return link

    old = fresh(b"2" * 32)
    recorded = old.a.send(Write(old.a.allocate_seq(), 0, b"old data"))
    new = fresh(b"3" * 32)  # the same nodes reconnect: the Secondary's nonce is new
    new.b.receive_bytes(recorded)
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        new.b.next_event()
    assert new.b.unacked_received_writes == 0


def test_the_handshake_itself_stays_readable_and_everything_after_it_is_sealed() -> None:
    a = PeerConnection(PeerConfig(node="node1", secret=SECRET, nonce=b"1" * 32, initiator=True), now=0.0)
    b = PeerConnection(PeerConfig(node="node2", secret=SECRET, nonce=b"2" * 32, initiator=False), now=0.0)
    link = Link(a, b)
    link.pump()
    wire_bytes = a.send(status(Role.PRIMARY))
    dec = FrameDecoder()
    dec.feed(wire_bytes)
    with pytest.raises(RemoteProtocolError):  # not a plain StateExchange any more
        dec.next_event()
    b.receive_bytes(wire_bytes)
    link.drain(b)
    assert b.peer_status is not None and b.peer_status.role is Role.PRIMARY
