"""Frames and messages of the replication link (no I/O).

Every frame is a fixed 20-byte header followed by a payload::

    magic u32 "TNDM" | version u8 | type u8 | flags u16 | length u32 | seq u64

all big-endian (after the handshake, the payload is sealed and ``length``
counts its 16-byte tag: see seal.py). ``seq`` carries the sequence number of the messages that have
one (Write, WriteAck, Flush, FlushAck and the last seq of an AckRange) and is 0
for all others. ``flags`` is 0 except on a Write, which may carry
:data:`F_DURABLE` ("make this write durable before you acknowledge it", the
write-through mode: DRBD sends the same hint as FUA on its data packets). A
receiver rejects a frame with a bad magic, another version, an unknown type,
any other flag bit, a
length above its limit or a payload that does not decode to exactly one
message -- with :class:`RemoteProtocolError`, after which the decoder stays
poisoned: a stream that lost its framing cannot be trusted again.

Writes are the hot path: :func:`encode_write_header` / :func:`pack_write_header_into`
produce only the 28 bytes in front of the data, so the driver can hand
``[header, data]`` to ``socket.sendmsg`` without copying the data. (After the
handshake every frame is sealed, see seal.py, which reads the data anyway.)

A small resync has thousands of scattered dirty blocks, so ranges travel in
bulk: ResyncRequests is ``count u32`` then ``count`` times ``offset u64 |
length u32``; ResyncDataBatch is the same table followed by the ranges' data
back to back. Both carry 1..MAX_RANGES ranges of 1..MAX_DATA bytes each, and a
batch's data must be exactly the sum of its lengths and fit the payload limit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from tandem.volume.genid import HISTORY_LEN, GenerationIds, SplitBrainPolicy
from tandem.volume.states import DiskState, Role

if TYPE_CHECKING:
    from tandem.volume.seal import Opener

MAGIC = 0x544E444D  # "TNDM"
VERSION = 8  # 2: F_DURABLE on Writes, ResyncRequests and ResyncDataBatch; 3: policy in StateExchange;
# 4: primary epoch in StateExchange; 5: frames after the handshake sealed (seal.py); 6: verify
# digests are SHA-256 (was BLAKE2b), cut to 16 bytes; 7: the link's secret is bound to the
# cluster and the volume (auth.link_secret): a 6 would fail the handshake, and say "wrong secret";
# 8: the vouch flag in StateExchange (genid.apply_vouches; a 7 refuses the frame header)
HEADER = struct.Struct("!IBBHIQ")
HEADER_SIZE = HEADER.size  # 20
MAX_DATA = 1 << 20
"""The largest data block a Write or ResyncData may carry."""
DEFAULT_MAX_PAYLOAD = MAX_DATA + 64
"""Default payload limit: a full data block plus the fields in front of it."""

VERIFY_BLOCK = 4096
"""The only block size a VerifyRequest may ask digests for (the replicator hashes 4 KiB)."""

F_DURABLE = 0x0001
"""Write flag: the peer acknowledges only once the data is on stable storage."""

_WRITE_HEADER = struct.Struct("!IBBHIQQ")  # frame header + offset
WRITE_HEADER_SIZE = _WRITE_HEADER.size  # 28
_U64 = struct.Struct("!Q")
_U64_U32 = struct.Struct("!QI")
_U64_U8 = struct.Struct("!QB")
_VERIFY_REQ = struct.Struct("!QII")
# role, disk, flags, split-brain policy, size, block size, weight, primary epoch,
# current, bitmap, nhist
_STATE = struct.Struct("!BBBBQIQQQQB")

Buffer = bytes | bytearray | memoryview


class ProtocolError(Exception):
    """The replication protocol was broken; ``reason`` says how.

    Raised as :class:`RemoteProtocolError` when the peer sent something
    invalid (log it, close the link, reconnect) and as
    :class:`LocalProtocolError` when this node misused the API (a bug here).
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


class LocalProtocolError(ProtocolError):
    """This node tried to do something the protocol does not allow."""


class _NeedData(Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData.NEED_DATA
"""Returned by ``next_event()`` when more bytes must be fed first."""
NeedData = Literal[_NeedData.NEED_DATA]


# --- messages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of each side: who I am and my challenge for you."""

    node: str
    nonce: bytes


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """The HMAC answering the peer's challenge (see auth.py)."""

    hmac: bytes


@dataclass(frozen=True, slots=True)
class AuthOk:
    """I verified your AuthResponse."""


@dataclass(frozen=True, slots=True)
class StateExchange:
    """A node's state; sent once after authentication and again on changes."""

    role: Role
    disk: DiskState
    generations: GenerationIds
    size: int
    bitmap_weight: int
    crashed_primary: bool = False
    discard_my_data: bool = False
    lost_leadership: bool = False
    #: the cluster's leader epoch of this node's latest promotion (0: none known)
    primary_epoch: int = 0
    #: bytes per dirty-bitmap bit; both sides must agree to exchange bitmaps
    block_size: int = 4096
    #: the sender's after-split-brain policy; both sides must use the same one
    #: (like DRBD's after-sb-*), else the decision would not be symmetric
    split_brain_policy: SplitBrainPolicy = SplitBrainPolicy.DISCONNECT
    #: the sender's disk failed while the peer took every write, and the sender has
    #: not been Primary since (`MetaState.peer_had_all`): the peer has every write
    #: (genid.apply_vouches)
    vouches_for_peer: bool = False


@dataclass(frozen=True, slots=True)
class Write:
    """Application data written on the Primary, to be written on the peer."""

    seq: int
    offset: int
    data: Buffer
    #: acknowledge only once durable on the peer (write-through volumes)
    durable: bool = False


@dataclass(frozen=True, slots=True)
class WriteAck:
    """The Write with this seq is written on the peer (protocol C)."""

    seq: int


@dataclass(frozen=True, slots=True)
class AckRange:
    """Acknowledges every Write with first <= seq <= last (batched acks)."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Flush:
    """A barrier: make every earlier Write durable; shares the Write seq space."""

    seq: int


@dataclass(frozen=True, slots=True)
class FlushAck:
    """Every Write before the Flush with this seq is durable on the peer."""

    seq: int


@dataclass(frozen=True, slots=True)
class ResyncRequest:
    """Sync target asks the source for a range."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ResyncData:
    """Sync source's answer: the data of a requested range."""

    offset: int
    data: Buffer


@dataclass(frozen=True, slots=True)
class ResyncRequests:
    """Sync target asks for many ranges in one frame (a small resync has one
    dirty run per few blocks: a frame each made the per-frame work dominate)."""

    ranges: tuple[tuple[int, int], ...]  # (offset, length), 1..MAX_RANGES of them


@dataclass(frozen=True, slots=True)
class ResyncDataBatch:
    """Sync source's answer to several small requested ranges in one frame:
    ``data`` is their bytes, back to back, in the order of ``ranges``."""

    ranges: tuple[tuple[int, int], ...]
    data: Buffer


@dataclass(frozen=True, slots=True)
class ResyncDone:
    """Sync target has everything: both sides go Connected."""


@dataclass(frozen=True, slots=True)
class BitmapChunk:
    """A slice of the raw dirty bitmap, at byte ``offset``; ``last`` ends it."""

    offset: int
    data: bytes
    last: bool = False


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """Asks the peer for one digest per ``blocksize`` block of a range."""

    offset: int
    length: int
    blocksize: int


@dataclass(frozen=True, slots=True)
class VerifyDigests:
    """Answer to a VerifyRequest: equal-length digests, one per block."""

    offset: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The sender closes the link; ``reason`` is for the peer's log."""

    reason: str


Message = (
    Hello
    | AuthResponse
    | AuthOk
    | StateExchange
    | Write
    | WriteAck
    | AckRange
    | Flush
    | FlushAck
    | ResyncRequest
    | ResyncData
    | ResyncDone
    | BitmapChunk
    | ResyncRequests
    | ResyncDataBatch
    | VerifyRequest
    | VerifyDigests
    | Ping
    | Pong
    | Disconnect
)

# Stable type codes: never renumber.
TYPE_CODES: dict[type, int] = {
    Hello: 1,
    AuthResponse: 2,
    AuthOk: 3,
    StateExchange: 4,
    Write: 5,
    WriteAck: 6,
    AckRange: 7,
    Flush: 8,
    FlushAck: 9,
    ResyncRequest: 10,
    ResyncData: 11,
    ResyncDone: 12,
    BitmapChunk: 13,
    VerifyRequest: 14,
    VerifyDigests: 15,
    Ping: 16,
    Pong: 17,
    Disconnect: 18,
    ResyncRequests: 19,
    ResyncDataBatch: 20,
}

_ROLE_CODES = {Role.PRIMARY: 1, Role.SECONDARY: 2}
_DISK_CODES = {
    DiskState.UP_TO_DATE: 1,
    DiskState.OUTDATED: 2,
    DiskState.INCONSISTENT: 3,
    DiskState.DISKLESS: 4,
    DiskState.FAILED: 5,
}
_ROLES = {v: k for k, v in _ROLE_CODES.items()}
_DISKS = {v: k for k, v in _DISK_CODES.items()}
_F_CRASHED, _F_DISCARD, _F_LOST, _F_VOUCH = 1, 2, 4, 8
_POLICY_CODES = {
    SplitBrainPolicy.DISCONNECT: 0,
    SplitBrainPolicy.DISCARD_ZERO_CHANGES: 1,
    SplitBrainPolicy.DISCARD_SECONDARY: 2,
    SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY: 3,
}
_POLICIES = {code: policy for policy, code in _POLICY_CODES.items()}
MAX_NAME = 255
MAX_REASON = 1024
MIN_NONCE, MAX_NONCE = 16, 64
MAX_MAC = 64
MAX_RANGES = 4096
"""The most ranges a ResyncRequests or ResyncDataBatch may carry."""
_RANGE = struct.Struct("!QI")  # offset, length
_COUNT = struct.Struct("!I")


# --- encoding -------------------------------------------------------------


def encode_write_header(seq: int, offset: int, length: int, durable: bool = False) -> bytes:
    """The 28 bytes sent in front of ``length`` bytes of Write data."""
    try:
        return _WRITE_HEADER.pack(MAGIC, VERSION, TYPE_CODES[Write], F_DURABLE if durable else 0,
                                  length + 8, seq, offset)
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode Write header: {exc}") from None


def pack_write_header_into(buf: bytearray | memoryview, pos: int, seq: int, offset: int, length: int,
                           durable: bool = False) -> None:
    """Like :func:`encode_write_header`, into a preallocated buffer at ``pos``."""
    try:
        _WRITE_HEADER.pack_into(buf, pos, MAGIC, VERSION, TYPE_CODES[Write],
                                F_DURABLE if durable else 0, length + 8, seq, offset)
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode Write header: {exc}") from None


def encode_parts(msg: Message) -> list[Buffer]:
    """Encode ``msg`` as buffers to send in order; data blocks are not copied."""
    try:
        if isinstance(msg, Write | ResyncData):
            is_write = isinstance(msg, Write)
            seq = msg.seq if is_write else 0
            flags = F_DURABLE if is_write and msg.durable else 0
            if len(msg.data) > MAX_DATA:
                raise LocalProtocolError(f"{type(msg).__name__} data above {MAX_DATA} bytes")
            head = _WRITE_HEADER.pack(
                MAGIC, VERSION, TYPE_CODES[type(msg)], flags, len(msg.data) + 8, seq, msg.offset
            )
            return [head, msg.data]
        if isinstance(msg, ResyncDataBatch):
            return [_enc_batch_head(msg), msg.data]
        seq, payload = _ENCODERS[type(msg)](msg)
        head = HEADER.pack(MAGIC, VERSION, TYPE_CODES[type(msg)], 0, len(payload), seq)
    except (struct.error, KeyError, UnicodeEncodeError, OverflowError, TypeError) as exc:
        raise LocalProtocolError(f"cannot encode {msg!r:.80}: {exc}") from None
    return [head + payload]


def encode(msg: Message) -> bytes:
    """Encode ``msg`` as one frame (copies data; see :func:`encode_parts`)."""
    return b"".join(encode_parts(msg))


def coalesce_acks(seqs: Iterator[int] | list[int] | set[int]) -> list[WriteAck | AckRange]:
    """Turn a set of acked seqs into as few ack messages as possible."""
    out: list[WriteAck | AckRange] = []
    ordered = sorted(set(seqs))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if i == j:
            out.append(WriteAck(ordered[i]))
        else:
            out.append(AckRange(ordered[i], ordered[j]))
        i = j + 1
    return out


def _name(text: str, limit: int, what: str) -> bytes:
    raw = text.encode()
    if len(raw) > limit:
        raise LocalProtocolError(f"{what} longer than {limit} bytes")
    return raw


def _enc_hello(m: Hello) -> tuple[int, bytes]:
    node = _name(m.node, MAX_NAME, "node name")
    if not MIN_NONCE <= len(m.nonce) <= MAX_NONCE:
        raise LocalProtocolError(f"nonce must be {MIN_NONCE}..{MAX_NONCE} bytes")
    return 0, bytes([len(m.nonce)]) + m.nonce + bytes([len(node)]) + node


def _enc_auth(m: AuthResponse) -> tuple[int, bytes]:
    if not 0 < len(m.hmac) <= MAX_MAC:
        raise LocalProtocolError(f"an HMAC must be 1..{MAX_MAC} bytes")
    return 0, bytes(m.hmac)


def _enc_empty(_m: object) -> tuple[int, bytes]:
    return 0, b""


def _enc_state(m: StateExchange) -> tuple[int, bytes]:
    g = m.generations
    flags = (
        (_F_CRASHED if m.crashed_primary else 0)
        | (_F_DISCARD if m.discard_my_data else 0)
        | (_F_LOST if m.lost_leadership else 0)
        | (_F_VOUCH if m.vouches_for_peer else 0)
    )
    head = _STATE.pack(
        _ROLE_CODES[m.role],
        _DISK_CODES[m.disk],
        flags,
        _POLICY_CODES[m.split_brain_policy],
        m.size,
        m.block_size,
        m.bitmap_weight,
        m.primary_epoch,
        g.current,
        g.bitmap,
        len(g.history),
    )
    return 0, head + b"".join(_U64.pack(h) for h in g.history)


def _enc_seq(m: WriteAck | Flush | FlushAck) -> tuple[int, bytes]:
    return m.seq, b""


def _enc_range(m: AckRange) -> tuple[int, bytes]:
    if m.first > m.last:
        raise LocalProtocolError("AckRange with first > last")
    return m.last, _U64.pack(m.first)


def _enc_req(m: ResyncRequest) -> tuple[int, bytes]:
    if not 0 < m.length <= MAX_DATA:
        raise LocalProtocolError(f"ResyncRequest length must be 1..{MAX_DATA}")
    return 0, _U64_U32.pack(m.offset, m.length)


def _check_ranges(name: str, ranges: tuple[tuple[int, int], ...]) -> None:
    if not 0 < len(ranges) <= MAX_RANGES:
        raise LocalProtocolError(f"{name} must carry 1..{MAX_RANGES} ranges")
    if any(not 0 < n <= MAX_DATA for _, n in ranges):
        raise LocalProtocolError(f"{name} range length must be 1..{MAX_DATA}")


def _pack_ranges(ranges: tuple[tuple[int, int], ...]) -> bytes:
    out = bytearray(_COUNT.size + _RANGE.size * len(ranges))
    _COUNT.pack_into(out, 0, len(ranges))
    pos = _COUNT.size
    for off, n in ranges:
        _RANGE.pack_into(out, pos, off, n)
        pos += _RANGE.size
    return bytes(out)


def _enc_reqs(m: ResyncRequests) -> tuple[int, bytes]:
    _check_ranges("ResyncRequests", m.ranges)
    return 0, _pack_ranges(m.ranges)


def batch_payload_size(ranges: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> int:
    """Payload bytes of a ResyncDataBatch over ``ranges`` (must be at most
    DEFAULT_MAX_PAYLOAD, the limit every decoder enforces)."""
    return _COUNT.size + _RANGE.size * len(ranges) + sum(n for _, n in ranges)


def _enc_batch_head(m: ResyncDataBatch) -> bytes:
    _check_ranges("ResyncDataBatch", m.ranges)
    if sum(n for _, n in m.ranges) != len(m.data):
        raise LocalProtocolError("ResyncDataBatch data is not the sum of its ranges")
    size = batch_payload_size(m.ranges)
    if size > DEFAULT_MAX_PAYLOAD:
        raise LocalProtocolError(f"ResyncDataBatch payload of {size} bytes above"
                                 f" {DEFAULT_MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, VERSION, TYPE_CODES[ResyncDataBatch], 0, size, 0) + _pack_ranges(m.ranges)


def _enc_chunk(m: BitmapChunk) -> tuple[int, bytes]:
    return 0, _U64_U8.pack(m.offset, int(m.last)) + bytes(m.data)


def _enc_vreq(m: VerifyRequest) -> tuple[int, bytes]:
    if not 0 < m.length <= MAX_DATA or m.blocksize != VERIFY_BLOCK:
        raise LocalProtocolError(f"VerifyRequest of {m.length} bytes in blocks of {m.blocksize}:"
                                 f" need 1..{MAX_DATA} bytes in blocks of {VERIFY_BLOCK}")
    return 0, _VERIFY_REQ.pack(m.offset, m.length, m.blocksize)


def _enc_digests(m: VerifyDigests) -> tuple[int, bytes]:
    size = len(m.digests[0]) if m.digests else 0
    if any(len(d) != size for d in m.digests) or size > 255:
        raise LocalProtocolError("VerifyDigests digests must have one length <= 255")
    return 0, _U64_U8.pack(m.offset, size) + b"".join(m.digests)


def _enc_nonce(m: Ping | Pong) -> tuple[int, bytes]:
    return 0, _U64.pack(m.nonce)


def _enc_disconnect(m: Disconnect) -> tuple[int, bytes]:
    return 0, _name(m.reason, MAX_REASON, "disconnect reason")


_ENCODERS = {
    Hello: _enc_hello,
    AuthResponse: _enc_auth,
    AuthOk: _enc_empty,
    StateExchange: _enc_state,
    WriteAck: _enc_seq,
    AckRange: _enc_range,
    Flush: _enc_seq,
    FlushAck: _enc_seq,
    ResyncRequest: _enc_req,
    ResyncRequests: _enc_reqs,
    ResyncDone: _enc_empty,
    BitmapChunk: _enc_chunk,
    VerifyRequest: _enc_vreq,
    VerifyDigests: _enc_digests,
    Ping: _enc_nonce,
    Pong: _enc_nonce,
    Disconnect: _enc_disconnect,
}


# --- decoding -------------------------------------------------------------


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason)


def _take(buf: bytearray | memoryview, start: int, end: int) -> bytes:
    with memoryview(buf) as view:
        return view[start:end].tobytes()


def _expect_len(name: str, start: int, end: int, size: int) -> None:
    if end - start != size:
        raise _bad(f"{name} payload is {end - start} bytes, expected {size}")


def _expect_no_seq(name: str, seq: int) -> None:
    if seq != 0:
        raise _bad(f"{name} frame with non-zero seq")


def _dec_hello(buf: bytearray, s: int, e: int, seq: int) -> Hello:
    _expect_no_seq("Hello", seq)
    if e - s < 2:
        raise _bad("Hello payload truncated")
    nlen = buf[s]
    if not MIN_NONCE <= nlen <= MAX_NONCE or s + 1 + nlen + 1 > e:
        raise _bad("Hello nonce length invalid")
    nonce = _take(buf, s + 1, s + 1 + nlen)
    p = s + 1 + nlen
    name_len = buf[p]
    if p + 1 + name_len != e:
        raise _bad("Hello node name length inconsistent with payload")
    return Hello(_take(buf, p + 1, e).decode(), nonce)


def _dec_auth(buf: bytearray, s: int, e: int, seq: int) -> AuthResponse:
    _expect_no_seq("AuthResponse", seq)
    if not 0 < e - s <= MAX_MAC:
        raise _bad(f"AuthResponse must carry 1..{MAX_MAC} bytes")
    return AuthResponse(_take(buf, s, e))


def _empty(cls: type) -> object:
    def dec(buf: bytearray, s: int, e: int, seq: int) -> object:
        _expect_no_seq(cls.__name__, seq)
        _expect_len(cls.__name__, s, e, 0)
        return cls()

    return dec


def _dec_state(buf: bytearray, s: int, e: int, seq: int) -> StateExchange:
    _expect_no_seq("StateExchange", seq)
    if e - s < _STATE.size:
        raise _bad("StateExchange payload truncated")
    role, disk, flags, policy, size, block_size, weight, epoch, cur, bm, nhist = _STATE.unpack_from(buf, s)
    if nhist > HISTORY_LEN:
        raise _bad(f"StateExchange with {nhist} history entries")
    _expect_len("StateExchange", s, e, _STATE.size + 8 * nhist)
    if role not in _ROLES or disk not in _DISKS:
        raise _bad("StateExchange with unknown role or disk state")
    if flags & ~(_F_CRASHED | _F_DISCARD | _F_LOST | _F_VOUCH):
        raise _bad("StateExchange with unknown flags")
    if policy not in _POLICIES:
        raise _bad(f"StateExchange with unknown split-brain policy code {policy}")
    hist = struct.unpack_from(f"!{nhist}Q", buf, s + _STATE.size)
    return StateExchange(
        role=_ROLES[role],
        disk=_DISKS[disk],
        generations=GenerationIds(cur, bm, hist),
        size=size,
        bitmap_weight=weight,
        block_size=block_size,
        crashed_primary=bool(flags & _F_CRASHED),
        discard_my_data=bool(flags & _F_DISCARD),
        lost_leadership=bool(flags & _F_LOST),
        vouches_for_peer=bool(flags & _F_VOUCH),
        primary_epoch=epoch,
        split_brain_policy=_POLICIES[policy],
    )


def _data_msg(cls: type) -> object:
    def dec(buf: bytearray, s: int, e: int, seq: int) -> object:
        if e - s < 8:
            raise _bad(f"{cls.__name__} payload truncated")
        if e - s - 8 > MAX_DATA:
            raise _bad(f"{cls.__name__} data above {MAX_DATA} bytes")
        (offset,) = _U64.unpack_from(buf, s)
        # A lent buffer (see FrameDecoder.feed) is used in place; our own is reused.
        data = buf[s + 8:e] if isinstance(buf, memoryview) else _take(buf, s + 8, e)
        if cls is Write:
            return Write(seq, offset, data)
        _expect_no_seq(cls.__name__, seq)
        return ResyncData(offset, data)

    return dec


def _seq_msg(cls: type) -> object:
    def dec(buf: bytearray, s: int, e: int, seq: int) -> object:
        _expect_len(cls.__name__, s, e, 0)
        return cls(seq)

    return dec


def _dec_range(buf: bytearray, s: int, e: int, seq: int) -> AckRange:
    _expect_len("AckRange", s, e, 8)
    (first,) = _U64.unpack_from(buf, s)
    if first > seq:
        raise _bad("AckRange with first > last")
    return AckRange(first, seq)


def _dec_req(buf: bytearray, s: int, e: int, seq: int) -> ResyncRequest:
    _expect_no_seq("ResyncRequest", seq)
    _expect_len("ResyncRequest", s, e, _U64_U32.size)
    offset, length = _U64_U32.unpack_from(buf, s)
    if not 0 < length <= MAX_DATA:
        raise _bad("ResyncRequest length out of range")
    return ResyncRequest(offset, length)


def _unpack_ranges(name: str, buf: bytearray | memoryview, s: int, e: int
                   ) -> tuple[tuple[tuple[int, int], ...], int]:
    """The range table at ``s``; returns it and where it ends."""
    if e - s < _COUNT.size:
        raise _bad(f"{name} payload truncated")
    (count,) = _COUNT.unpack_from(buf, s)
    if not 0 < count <= MAX_RANGES:
        raise _bad(f"{name} with {count} ranges (1..{MAX_RANGES})")
    end = s + _COUNT.size + _RANGE.size * count
    if end > e:
        raise _bad(f"{name} range table truncated")
    ranges = tuple(_RANGE.iter_unpack(bytes(buf[s + _COUNT.size:end])))
    if any(not 0 < n <= MAX_DATA for _, n in ranges):
        raise _bad(f"{name} range length out of range")
    return ranges, end


def _dec_reqs(buf: bytearray, s: int, e: int, seq: int) -> ResyncRequests:
    _expect_no_seq("ResyncRequests", seq)
    ranges, end = _unpack_ranges("ResyncRequests", buf, s, e)
    if end != e:
        raise _bad(f"ResyncRequests payload has {e - end} bytes after its ranges")
    return ResyncRequests(ranges)


def _dec_batch(buf: bytearray, s: int, e: int, seq: int) -> ResyncDataBatch:
    _expect_no_seq("ResyncDataBatch", seq)
    ranges, end = _unpack_ranges("ResyncDataBatch", buf, s, e)
    if sum(n for _, n in ranges) != e - end:
        raise _bad("ResyncDataBatch data is not the sum of its ranges")
    # A lent buffer (see FrameDecoder.feed) is used in place; our own is reused.
    data = buf[end:e] if isinstance(buf, memoryview) else _take(buf, end, e)
    return ResyncDataBatch(ranges, data)


def _dec_chunk(buf: bytearray, s: int, e: int, seq: int) -> BitmapChunk:
    _expect_no_seq("BitmapChunk", seq)
    if e - s < _U64_U8.size:
        raise _bad("BitmapChunk payload truncated")
    offset, last = _U64_U8.unpack_from(buf, s)
    if last > 1:
        raise _bad("BitmapChunk last flag must be 0 or 1")
    return BitmapChunk(offset, _take(buf, s + _U64_U8.size, e), bool(last))


def _dec_vreq(buf: bytearray, s: int, e: int, seq: int) -> VerifyRequest:
    _expect_no_seq("VerifyRequest", seq)
    _expect_len("VerifyRequest", s, e, _VERIFY_REQ.size)
    offset, length, blocksize = _VERIFY_REQ.unpack_from(buf, s)
    # The answer is one pread of `length` bytes: a peer asking for gigabytes would
    # make that read come back short, and a short read fails our disk.
    if not 0 < length <= MAX_DATA or blocksize != VERIFY_BLOCK:
        raise _bad(f"VerifyRequest of {length} bytes in blocks of {blocksize}"
                   f" (need 1..{MAX_DATA} bytes in blocks of {VERIFY_BLOCK})")
    return VerifyRequest(offset, length, blocksize)


def _dec_digests(buf: bytearray, s: int, e: int, seq: int) -> VerifyDigests:
    _expect_no_seq("VerifyDigests", seq)
    if e - s < _U64_U8.size:
        raise _bad("VerifyDigests payload truncated")
    offset, size = _U64_U8.unpack_from(buf, s)
    body = _take(buf, s + _U64_U8.size, e)
    if size == 0:
        if body:
            raise _bad("VerifyDigests with zero digest size but a body")
        return VerifyDigests(offset, ())
    if len(body) % size:
        raise _bad("VerifyDigests body is not a whole number of digests")
    return VerifyDigests(offset, tuple(body[i : i + size] for i in range(0, len(body), size)))


def _nonce_msg(cls: type) -> object:
    def dec(buf: bytearray, s: int, e: int, seq: int) -> object:
        _expect_no_seq(cls.__name__, seq)
        _expect_len(cls.__name__, s, e, 8)
        return cls(_U64.unpack_from(buf, s)[0])

    return dec


def _dec_disconnect(buf: bytearray, s: int, e: int, seq: int) -> Disconnect:
    _expect_no_seq("Disconnect", seq)
    if e - s > MAX_REASON:
        raise _bad("Disconnect reason too long")
    return Disconnect(_take(buf, s, e).decode())


_WRITE_CODE = TYPE_CODES[Write]
_DECODERS = {
    TYPE_CODES[Hello]: _dec_hello,
    TYPE_CODES[AuthResponse]: _dec_auth,
    TYPE_CODES[AuthOk]: _empty(AuthOk),
    TYPE_CODES[StateExchange]: _dec_state,
    TYPE_CODES[Write]: _data_msg(Write),
    TYPE_CODES[WriteAck]: _seq_msg(WriteAck),
    TYPE_CODES[AckRange]: _dec_range,
    TYPE_CODES[Flush]: _seq_msg(Flush),
    TYPE_CODES[FlushAck]: _seq_msg(FlushAck),
    TYPE_CODES[ResyncRequest]: _dec_req,
    TYPE_CODES[ResyncData]: _data_msg(ResyncData),
    TYPE_CODES[ResyncDone]: _empty(ResyncDone),
    TYPE_CODES[BitmapChunk]: _dec_chunk,
    TYPE_CODES[VerifyRequest]: _dec_vreq,
    TYPE_CODES[VerifyDigests]: _dec_digests,
    TYPE_CODES[Ping]: _nonce_msg(Ping),
    TYPE_CODES[Pong]: _nonce_msg(Pong),
    TYPE_CODES[Disconnect]: _dec_disconnect,
    TYPE_CODES[ResyncRequests]: _dec_reqs,
    TYPE_CODES[ResyncDataBatch]: _dec_batch,
}


class FrameDecoder:
    """Turns a byte stream into messages: ``feed()`` bytes, pull ``next_event()``.

    Bytes are appended to one bytearray and consumed by advancing a read
    position; the consumed prefix is dropped only once it is at least half
    the buffer, so feeding a frame in many small pieces costs linear time.
    The length field is checked as soon as a header is complete, before
    buffering the payload, so a hostile length cannot make us hold 4 GiB.

    ``feed(data, borrow=True)`` lends the decoder the caller's buffer: frames
    that lie wholly in it are decoded in place, and the data of Write and
    ResyncData is then a memoryview into it (no copy), valid until the caller
    reuses the buffer. The caller must pull events until NEED_DATA before it
    does; at NEED_DATA the decoder copies an incomplete tail into its own buffer.

    ``feed(data, borrow=True, keep_tail=True)`` avoids even that copy: at
    NEED_DATA the incomplete tail stays in the caller's buffer, and the caller,
    before reusing the buffer, calls :meth:`release_lent` to learn its length and
    feeds those bytes again in front of the next ones. Otherwise, once a large
    frame straddled two receives, every later byte went through our own buffer
    (appended, sliced out, compacted): three extra copies of a full sync.
    """

    __slots__ = ("_buf", "_pos", "_max_payload", "_limit", "_error", "_lent", "_lent_pos", "_keep_tail",
                 "_opener")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self._buf = bytearray()
        self._pos = 0
        self._max_payload = max_payload
        self._limit = max_payload  # of a frame's length field (a sealed one carries a tag)
        self._error: RemoteProtocolError | None = None
        self._lent: memoryview | None = None
        self._lent_pos = 0
        self._keep_tail = False
        self._opener: Opener | None = None

    def open_with(self, opener: Opener, tag_size: int) -> None:
        """Every frame after the one just returned is sealed (see seal.py):
        ``opener.open(header, sealed payload)`` gives its payload or raises."""
        self._opener = opener
        self._limit = self._max_payload + tag_size

    @property
    def poisoned(self) -> bool:
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        lent = 0 if self._lent is None else len(self._lent) - self._lent_pos
        return len(self._buf) - self._pos + lent

    def feed(self, data: Buffer, borrow: bool = False, keep_tail: bool = False) -> None:
        """Append received bytes; ignored once the decoder is poisoned."""
        if self._error is not None:
            return
        self._settle()
        if borrow and self._pos >= len(self._buf):
            self._buf.clear()
            self._pos = 0
            self._lent, self._lent_pos = memoryview(data).cast("B"), 0
            self._keep_tail = keep_tail
        else:
            self._buf += data

    def release_lent(self) -> int:
        """Give the lent buffer back (after NEED_DATA, see the class docstring):
        the number of bytes at its end that belong to an incomplete frame."""
        lent, self._lent = self._lent, None
        return 0 if lent is None else len(lent) - self._lent_pos

    def _settle(self) -> None:
        """Copy what is left of a lent buffer into our own."""
        lent = self._lent
        if lent is not None:
            self._lent = None
            if self._lent_pos < len(lent):
                self._buf += lent[self._lent_pos:]

    def next_event(self) -> Message | NeedData:
        """The next complete message, or NEED_DATA; raises RemoteProtocolError."""
        if self._error is not None:
            raise self._error
        try:
            if self._lent is not None:
                msg = self._next_lent()
                if msg is not NEED_DATA or self._keep_tail:
                    return msg
                self._settle()
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            self._error = RemoteProtocolError(f"malformed payload: {exc}")
            raise self._error from None

    def _next_lent(self) -> Message | NeedData:
        lent, pos = self._lent, self._lent_pos
        assert lent is not None
        end = self._frame_end(lent, pos)
        if end is None:
            return NEED_DATA
        msg = self._decode(lent, pos, end)
        self._lent_pos = end
        return msg

    def _frame_end(self, buf: bytearray | memoryview, pos: int) -> int | None:
        """End of the frame at ``pos`` if it is complete (header checked)."""
        if len(buf) - pos < HEADER_SIZE:
            return None
        magic, version, mtype, flags, length, seq = HEADER.unpack_from(buf, pos)
        if magic != MAGIC:
            raise _bad(f"bad magic 0x{magic:08x}")
        if version != VERSION:
            raise _bad(f"unsupported protocol version {version} (this node speaks {VERSION}:"
                       " both nodes of a volume must run the same tandem release)")
        if mtype not in _DECODERS:
            raise _bad(f"unknown message type {mtype}")
        if flags and (mtype != _WRITE_CODE or flags != F_DURABLE):
            raise _bad(f"reserved flags set: 0x{flags:04x} on message type {mtype}")
        if length > self._limit:
            raise _bad(f"frame payload of {length} bytes exceeds the limit {self._limit}")
        end = pos + HEADER_SIZE + length
        return end if len(buf) >= end else None

    def _decode(self, buf: bytearray | memoryview, pos: int, end: int) -> Message:
        _, _, mtype, flags, _, seq = HEADER.unpack_from(buf, pos)
        s = pos + HEADER_SIZE  # the payload: buf[s:end]
        if self._opener is not None:
            # Opened into new memory: Write data is then a view into it, which no
            # later receive reuses.
            with memoryview(buf) as view:
                buf = memoryview(self._opener.open(view[pos:s], view[s:end]))
            s, end = 0, len(buf)
        if mtype == _WRITE_CODE:
            # The hot path, inline: one Write object per frame, durable flag included
            # (only F_DURABLE, and only on a Write, gets past _frame_end).
            if end - s < 8:
                raise _bad("Write payload truncated")
            if end - s - 8 > MAX_DATA:
                raise _bad(f"Write data above {MAX_DATA} bytes")
            (offset,) = _U64.unpack_from(buf, s)
            data = buf[s + 8:end] if isinstance(buf, memoryview) else _take(buf, s + 8, end)
            return Write(seq, offset, data, flags == F_DURABLE)
        return _DECODERS[mtype](buf, s, end, seq)  # type: ignore[return-value]

    def _next(self) -> Message | NeedData:
        buf, pos = self._buf, self._pos
        end = self._frame_end(buf, pos)
        if end is None:
            return NEED_DATA
        msg = self._decode(buf, pos, end)
        self._pos = end
        if end >= len(buf):
            buf.clear()
            self._pos = 0
        elif end > len(buf) // 2:
            del buf[:end]
            self._pos = 0
        return msg
