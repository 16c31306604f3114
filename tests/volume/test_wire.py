"""Frame codec: round trips, stream splitting, and rejection of bad input."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.volume import wire
from tandem.volume.genid import GenerationIds, SplitBrainPolicy
from tandem.volume.states import DiskState, Role
from tandem.volume.wire import NEED_DATA, FrameDecoder, ProtocolError, RemoteProtocolError

from .strategies import messages

SETTINGS = settings(max_examples=150, deadline=None)


def decode_all(dec: FrameDecoder) -> list[wire.Message]:
    out = []
    while (msg := dec.next_event()) is not NEED_DATA:
        out.append(msg)
    return out


def frame(
    mtype: int,
    payload: bytes,
    *,
    seq: int = 0,
    magic: int = wire.MAGIC,
    version: int = wire.VERSION,
    flags: int = 0,
    length: int | None = None,
) -> bytes:
    size = len(payload) if length is None else length
    return wire.HEADER.pack(magic, version, mtype, flags, size, seq) + payload


def assert_poisoned(dec: FrameDecoder, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        dec.next_event()
    assert dec.poisoned
    with pytest.raises(ProtocolError, match=match):  # fails again, same reason
        dec.next_event()
    dec.feed(wire.encode(wire.Ping(1)))  # even valid input cannot revive it
    with pytest.raises(ProtocolError):
        dec.next_event()


@SETTINGS
@given(messages)
def test_every_message_round_trips(msg: wire.Message) -> None:
    dec = FrameDecoder()
    dec.feed(wire.encode(msg))
    assert decode_all(dec) == [msg]
    assert dec.buffered == 0


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_arbitrary_splits_of_a_stream(msgs: list[wire.Message], data: st.DataObject) -> None:
    stream = b"".join(wire.encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = FrameDecoder()
    got: list[wire.Message] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        dec.feed(stream[prev:cut])
        prev = cut
        got.extend(decode_all(dec))
    assert got == msgs


def _owned(msg: wire.Message) -> wire.Message:
    """A copy whose data no longer points into a lent buffer."""
    if isinstance(msg, wire.Write):
        return wire.Write(msg.seq, msg.offset, bytes(msg.data), msg.durable)
    if isinstance(msg, wire.ResyncData):
        return wire.ResyncData(msg.offset, bytes(msg.data))
    if isinstance(msg, wire.ResyncDataBatch):
        return wire.ResyncDataBatch(msg.ranges, bytes(msg.data))
    return msg


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_lent_buffers_decode_like_copies(msgs: list[wire.Message], data: st.DataObject) -> None:
    """Like a socket driver: one receive buffer, reused (overwritten with junk)
    after each batch is drained; frames split anywhere must still decode."""
    stream = b"".join(wire.encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = FrameDecoder()
    rx = bytearray(len(stream) + 1)
    got: list[wire.Message] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        n = cut - prev
        rx[:n] = stream[prev:cut]
        if n:
            dec.feed(memoryview(rx)[:n], borrow=True)
        prev = cut
        got.extend(_owned(m) for m in decode_all(dec))
        rx[:] = b"\xee" * len(rx)  # the driver reuses its buffer
    assert got == msgs
    assert dec.buffered == 0


def test_byte_by_byte_feeding() -> None:
    msgs = [wire.Write(7, 4096, b"x" * 5000), wire.Flush(8), wire.Ping(3)]
    dec = FrameDecoder()
    got = []
    for b in b"".join(wire.encode(m) for m in msgs):
        dec.feed(bytes([b]))
        got.extend(decode_all(dec))
    assert got == msgs


def test_all_types_have_codes_and_decoders() -> None:
    assert len(set(wire.TYPE_CODES.values())) == len(wire.TYPE_CODES) == 20


def test_write_header_lets_the_driver_send_data_separately() -> None:
    data = bytes(range(256)) * 16
    head = wire.encode_write_header(42, 1 << 40, len(data))
    assert len(head) == wire.WRITE_HEADER_SIZE
    buf = bytearray(100)
    wire.pack_write_header_into(buf, 10, 42, 1 << 40, len(data))
    assert bytes(buf[10 : 10 + wire.WRITE_HEADER_SIZE]) == head
    parts = wire.encode_parts(wire.Write(42, 1 << 40, data))
    assert parts[0] == head and parts[1] is data  # the data is not copied
    dec = FrameDecoder()
    dec.feed(head)
    dec.feed(memoryview(data))
    assert decode_all(dec) == [wire.Write(42, 1 << 40, data)]


def test_durable_flag_travels_in_the_header_of_writes_only() -> None:
    data = b"d" * 4096
    head = wire.encode_write_header(9, 8192, len(data), durable=True)
    buf = bytearray(wire.WRITE_HEADER_SIZE)
    wire.pack_write_header_into(buf, 0, 9, 8192, len(data), durable=True)
    assert bytes(buf) == head
    assert wire.encode_parts(wire.Write(9, 8192, data, True))[0] == head
    assert wire.HEADER.unpack_from(head)[3] == wire.F_DURABLE
    for borrow in (False, True):  # decoded in place and from the decoder's own buffer
        dec = FrameDecoder()
        dec.feed(head + data, borrow=borrow)
        (msg,) = decode_all(dec)
        assert msg.durable and bytes(msg.data) == data and msg.seq == 9
    plain = FrameDecoder()
    plain.feed(wire.encode(wire.Write(9, 8192, data)))
    assert decode_all(plain)[0].durable is False


@pytest.mark.parametrize(("mtype", "payload", "flags"), [
    (wire.TYPE_CODES[wire.Flush], b"", wire.F_DURABLE),  # durable means nothing on a Flush
    (wire.TYPE_CODES[wire.ResyncData], struct.pack("!Q", 0) + b"x", wire.F_DURABLE),
    (wire.TYPE_CODES[wire.Write], struct.pack("!Q", 0) + b"x", 0x0002),  # unknown bit
    (wire.TYPE_CODES[wire.Write], struct.pack("!Q", 0) + b"x", wire.F_DURABLE | 0x8000),
])
def test_flags_other_than_durable_on_a_write_are_rejected(mtype: int, payload: bytes,
                                                          flags: int) -> None:
    dec = FrameDecoder()
    dec.feed(frame(mtype, payload, seq=1 if mtype != wire.TYPE_CODES[wire.ResyncData] else 0,
                   flags=flags))
    assert_poisoned(dec, "reserved flags")


def test_state_exchange_fields_survive() -> None:
    msg = wire.StateExchange(
        Role.PRIMARY,
        DiskState.OUTDATED,
        GenerationIds(5, 6, (7, 8)),
        10 << 30,
        99,
        crashed_primary=True,
        lost_leadership=True,
        split_brain_policy=SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY,
        vouches_for_peer=True,
    )
    dec = FrameDecoder()
    dec.feed(wire.encode(msg))
    (got,) = decode_all(dec)
    assert got == msg and got.lost_leadership and not got.discard_my_data and got.vouches_for_peer
    assert got.split_brain_policy is SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY


def test_coalesce_acks() -> None:
    acks = wire.coalesce_acks([5, 1, 2, 3, 9, 10, 7])
    assert acks == [wire.AckRange(1, 3), wire.WriteAck(5), wire.WriteAck(7), wire.AckRange(9, 10)]
    assert wire.coalesce_acks([]) == []


def test_bad_magic() -> None:
    dec = FrameDecoder()
    dec.feed(frame(16, struct.pack("!Q", 1), magic=0xDEADBEEF))
    assert_poisoned(dec, "bad magic")


def test_wrong_version() -> None:
    dec = FrameDecoder()
    dec.feed(frame(16, struct.pack("!Q", 1), version=wire.VERSION - 1))  # the release before
    assert_poisoned(dec, re.escape(f"unsupported protocol version {wire.VERSION - 1} (this node"
                                   f" speaks {wire.VERSION}: both nodes of a volume must run the"
                                   " same tandem release)"))


def test_unknown_type() -> None:
    dec = FrameDecoder()
    dec.feed(frame(200, b""))
    assert_poisoned(dec, "unknown message type 200")


def test_reserved_flags() -> None:
    dec = FrameDecoder()
    dec.feed(frame(16, struct.pack("!Q", 1), flags=1))
    assert_poisoned(dec, "reserved flags")


def test_oversized_length_rejected_before_payload_arrives() -> None:
    dec = FrameDecoder(max_payload=1024)
    dec.feed(frame(wire.TYPE_CODES[wire.Write], b"", length=1025))  # header only
    assert_poisoned(dec, "exceeds the limit")


def test_default_limit_admits_a_full_data_block() -> None:
    dec = FrameDecoder()
    msg = wire.Write(1, 0, bytes(wire.MAX_DATA))
    dec.feed(wire.encode(msg))
    assert decode_all(dec) == [msg]
    with pytest.raises(wire.LocalProtocolError):
        wire.encode(wire.Write(1, 0, bytes(wire.MAX_DATA + 1)))


def test_truncated_frame_waits_for_more() -> None:
    dec = FrameDecoder()
    raw = wire.encode(wire.Write(1, 0, b"abcdef"))
    dec.feed(raw[:-1])
    assert dec.next_event() is NEED_DATA
    dec.feed(raw[-1:])
    assert dec.next_event() == wire.Write(1, 0, b"abcdef")


@pytest.mark.parametrize(
    ("mtype", "payload", "seq", "match"),
    [
        (wire.TYPE_CODES[wire.Ping], b"\x00" * 7, 0, "expected 8"),
        (wire.TYPE_CODES[wire.Ping], b"\x00" * 9, 0, "expected 8"),
        (wire.TYPE_CODES[wire.Ping], b"\x00" * 8, 5, "non-zero seq"),
        (wire.TYPE_CODES[wire.AuthOk], b"x", 0, "expected 0"),
        (wire.TYPE_CODES[wire.Write], b"\x00" * 7, 1, "truncated"),
        (wire.TYPE_CODES[wire.Hello], b"\x10" + b"n" * 16 + b"\x05ab", 0, "inconsistent"),
        (wire.TYPE_CODES[wire.Hello], b"\x03abc\x01x", 0, "nonce length"),
        (wire.TYPE_CODES[wire.Hello], b"\x10" + b"n" * 16 + b"\x02\xff\xfe", 0, "malformed"),
        (wire.TYPE_CODES[wire.AckRange], struct.pack("!Q", 9), 3, "first > last"),
        (wire.TYPE_CODES[wire.StateExchange], b"\x01\x01", 0, "truncated"),
        (
            wire.TYPE_CODES[wire.StateExchange],
            struct.pack("!BBBBQIQQQQB", 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            0,
            "unknown role",
        ),
        (
            wire.TYPE_CODES[wire.StateExchange],
            struct.pack("!BBBBQIQQQQB", 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2),
            0,
            "expected",
        ),
        (
            wire.TYPE_CODES[wire.StateExchange],
            struct.pack("!BBBBQIQQQQB", 1, 1, 16, 0, 0, 0, 0, 0, 0, 0, 0),  # 8 is the vouch
            0,
            "unknown flags",
        ),
        (
            wire.TYPE_CODES[wire.StateExchange],
            struct.pack("!BBBBQIQQQQB", 1, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0),
            0,
            "unknown split-brain policy code 4",
        ),
        (
            wire.TYPE_CODES[wire.StateExchange],
            struct.pack("!BBBBQIQQQQB", 1, 1, 0, 255, 0, 0, 0, 0, 0, 0, 0),
            0,
            "unknown split-brain policy code 255",
        ),
        (
            wire.TYPE_CODES[wire.StateExchange],
            struct.pack("!BBBQIQQQB", 1, 1, 0, 0, 0, 0, 0, 0, 0),  # version 2 layout, no policy
            0,
            "truncated",
        ),
        (wire.TYPE_CODES[wire.VerifyDigests], struct.pack("!QB", 0, 4) + b"abcdef", 0, "whole number"),
        (wire.TYPE_CODES[wire.ResyncRequest], struct.pack("!QI", 0, 0), 0, "out of range"),
        # a verify answer is one pread: a huge request would come back short and fail the disk
        (wire.TYPE_CODES[wire.VerifyRequest], struct.pack("!QII", 0, wire.MAX_DATA + 1, 4096), 0,
         "need 1..1048576 bytes"),
        (wire.TYPE_CODES[wire.VerifyRequest], struct.pack("!QII", 0, 0xFFFFFFFF, 4096), 0,
         "need 1..1048576 bytes"),
        (wire.TYPE_CODES[wire.VerifyRequest], struct.pack("!QII", 0, 8192, 1), 0, "in blocks of 4096"),
        (wire.TYPE_CODES[wire.BitmapChunk], struct.pack("!QB", 0, 2), 0, "last flag"),
        (wire.TYPE_CODES[wire.ResyncRequests], b"\x00\x00", 0, "truncated"),
        (wire.TYPE_CODES[wire.ResyncRequests], struct.pack("!I", 0), 0, "0 ranges"),
        (wire.TYPE_CODES[wire.ResyncRequests], struct.pack("!I", wire.MAX_RANGES + 1), 0, "ranges"),
        (wire.TYPE_CODES[wire.ResyncRequests], struct.pack("!IQI", 2, 0, 4096), 0,
         "table truncated"),
        (wire.TYPE_CODES[wire.ResyncRequests], struct.pack("!IQI", 1, 0, 0), 0, "out of range"),
        (wire.TYPE_CODES[wire.ResyncRequests], struct.pack("!IQI", 1, 0, wire.MAX_DATA + 1), 0,
         "out of range"),
        (wire.TYPE_CODES[wire.ResyncRequests], struct.pack("!IQI", 1, 0, 4096) + b"x", 0,
         "after its ranges"),
        (wire.TYPE_CODES[wire.ResyncRequests], struct.pack("!IQI", 1, 0, 4096), 3, "non-zero seq"),
        (wire.TYPE_CODES[wire.ResyncDataBatch], struct.pack("!IQI", 1, 0, 4) + b"abc", 0,
         "not the sum"),
        (wire.TYPE_CODES[wire.ResyncDataBatch], struct.pack("!IQI", 1, 0, 2) + b"abc", 0,
         "not the sum"),
        (wire.TYPE_CODES[wire.ResyncDataBatch], struct.pack("!I", 0), 0, "0 ranges"),
        (wire.TYPE_CODES[wire.ResyncDataBatch], struct.pack("!IQI", 1, 0, 0), 0, "out of range"),
        (wire.TYPE_CODES[wire.ResyncDataBatch], struct.pack("!IQI", 1, 0, 1) + b"a", 9,
         "non-zero seq"),
        (wire.TYPE_CODES[wire.AuthResponse], b"", 0, "1..64"),
    ],
)
def test_inconsistent_payloads(mtype: int, payload: bytes, seq: int, match: str) -> None:
    dec = FrameDecoder()
    dec.feed(frame(mtype, payload, seq=seq))
    assert_poisoned(dec, match)


@SETTINGS
@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_another_exception(garbage: bytes) -> None:
    dec = FrameDecoder()
    dec.feed(garbage)
    try:
        decode_all(dec)
    except ProtocolError:
        assert dec.poisoned
        with pytest.raises(ProtocolError):
            dec.next_event()


@SETTINGS
@given(messages, st.data())
def test_corrupted_valid_frames_decode_or_raise_protocol_error(
    msg: wire.Message, data: st.DataObject
) -> None:
    raw = bytearray(wire.encode(msg))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    dec = FrameDecoder()
    dec.feed(raw)
    try:
        decode_all(dec)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            dec.next_event()
    if pos < 4:  # the magic: must never be accepted
        assert dec.poisoned


def test_large_stream_is_decoded_without_quadratic_copies() -> None:
    one = wire.encode(wire.Write(1, 0, b"x" * 4096))
    dec = FrameDecoder()
    count = 0
    # 2000 frames fed in 3000-byte slices: the consumed prefix must be dropped
    stream = b"".join(wire.encode(wire.Write(i + 1, 0, b"x" * 4096)) for i in range(2000))
    for pos in range(0, len(stream), 3000):
        dec.feed(stream[pos : pos + 3000])
        count += len(decode_all(dec))
        assert len(dec._buf) < 2 * len(one) + 3000  # consumed bytes are dropped
    assert count == 2000


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_kept_tails_decode_like_copies(msgs: list[wire.Message], data: st.DataObject) -> None:
    """Like the link's receive loop: the incomplete tail stays in the caller's
    buffer (moved to its front), and the decoder never copies a byte itself."""
    stream = b"".join(wire.encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = FrameDecoder()
    rx = bytearray(len(stream) + 1)
    got: list[wire.Message] = []
    prev = tail = 0
    for cut in [*cuts, len(stream)]:
        n = cut - prev
        rx[tail : tail + n] = stream[prev:cut]
        prev, end = cut, tail + n
        if end:
            dec.feed(memoryview(rx)[:end], borrow=True, keep_tail=True)
        got.extend(_owned(m) for m in decode_all(dec))
        tail = dec.release_lent()
        assert dec.buffered == 0 and len(dec._buf) == 0  # nothing copied
        rx[:tail] = rx[end - tail : end]
        rx[tail:] = b"\xee" * (len(rx) - tail)  # the driver reuses its buffer
    assert got == msgs
    assert tail == 0


def test_kept_tail_still_checks_the_header_first() -> None:
    """An oversized length is refused as soon as the header is in, even while
    the rest of the frame would stay in the caller's buffer."""
    dec = FrameDecoder()
    raw = frame(wire.TYPE_CODES[wire.ResyncData], b"", length=wire.DEFAULT_MAX_PAYLOAD + 1)
    dec.feed(memoryview(bytearray(raw)), borrow=True, keep_tail=True)
    assert_poisoned(dec, "exceeds the limit")


def test_batched_resync_messages_refuse_to_encode_what_decoders_reject() -> None:
    with pytest.raises(wire.LocalProtocolError, match="ranges"):
        wire.encode(wire.ResyncRequests(()))
    with pytest.raises(wire.LocalProtocolError, match="ranges"):
        wire.encode(wire.ResyncRequests(((0, 1),) * (wire.MAX_RANGES + 1)))
    with pytest.raises(wire.LocalProtocolError, match="length"):
        wire.encode(wire.ResyncRequests(((0, 0),)))
    with pytest.raises(wire.LocalProtocolError, match="sum"):
        wire.encode(wire.ResyncDataBatch(((0, 4),), b"abc"))
    big = tuple((i << 17, 1 << 17) for i in range(8))  # 1 MiB of data + 8 entries: above
    with pytest.raises(wire.LocalProtocolError, match="above"):
        wire.encode(wire.ResyncDataBatch(big, bytes(1 << 20)))


def test_a_full_batch_fits_the_payload_limit() -> None:
    """The largest batch the source builds (see Replicator._read_batches) still
    passes a decoder with the default limit."""
    n = (wire.DEFAULT_MAX_PAYLOAD - wire.batch_payload_size([])) // (12 + 4096)
    rs = tuple((i * 8192, 4096) for i in range(n))
    assert wire.batch_payload_size(rs) <= wire.DEFAULT_MAX_PAYLOAD
    msg = wire.ResyncDataBatch(rs, bytes(4096 * n))
    dec = FrameDecoder()
    dec.feed(wire.encode(msg))
    assert decode_all(dec) == [msg]
