"""The replication link to one peer, as a sans-IO state machine (after h11).

Everything that affects the state of the link lives here; the driver owns the
socket, the disk and the clock and only moves bytes and events:

    peer = PeerConnection(config, now=monotonic())
    sock.sendall(peer.data_to_send())           # our Hello
    loop:
        peer.receive_bytes(sock.recv(...))      # b"" means EOF
        while (event := peer.next_event()) is not NEED_DATA:
            handle(event)                       # may call peer.send(...)
        sock.sendall(peer.data_to_send())       # automatic frames (auth, pong)
    every ~100 ms: peer.tick(monotonic())       # pings, timeouts

The rules, in plain words:

* The link's state is a :class:`ConnectionState`. Every message sent or
  received, and every internal trigger, is looked up in :data:`TRANSITIONS`,
  a table ``state -> {input: next state}``. An input missing from the table is
  a protocol error: received, it is the peer's fault (RemoteProtocolError);
  sent, it is ours (LocalProtocolError). Either way the link is poisoned: the
  state becomes ProtocolError, a Disconnect with the reason is queued for the
  peer, and every later call raises the same error.
* Authentication (auth.py) runs first; nothing but Hello/AuthResponse/AuthOk
  is accepted until both sides verified each other. These frames, Pings and
  Pongs are sent automatically and may not be passed to ``send()``.
* Then each side sends a StateExchange; when both are known the sync decision
  (genid.decide_sync) moves the link to Connected, to WFBitMapS/WFBitMapT or,
  for split brain / unrelated data / incompatible states, to StandAlone.
  Each StateExchange carries the sender's after-split-brain policy (it must be
  the one in PeerConfig); different policies on the two sides are refused like
  a split brain, since each side applies its own and both could keep their data.
* In WFBitMap* both sides send their dirty bitmap as BitmapChunks, the last
  one flagged; once both "last" chunks passed, the link is SyncSource or
  SyncTarget. The target requests ranges (ResyncRequest, or many at once in a
  ResyncRequests), the source answers each range exactly once, alone in a
  ResyncData or with other small ones in a ResyncDataBatch, and the target
  ends with ResyncDone: Connected.
* Writes and Flushes share one sequence space, strictly increasing per
  direction; they are allowed from Connected through the resync states, and
  only from the side whose StateExchange says Primary. Acks may arrive in any
  order (WriteAck, AckRange). A flush completes (FlushCompleted) only when its
  FlushAck arrived and every Write sent before it is acked. On the receiving
  side ``send(FlushAck)`` is refused until every earlier Write was acked, which
  is how the secondary promises "all earlier writes are durable".
* Time only enters through ``tick(now)``: a ping when nothing was heard for
  ``ping_interval``, Timeout when a ping stays unanswered (and nothing else
  arrives) for ``ping_timeout``, or when the handshake and state exchange take
  longer than ``handshake_timeout``.

Suggested resync sequence for the driver (identifiers persisted before data
moves, so an interrupted resync resumes as a bitmap resync): on SyncSource the
source applies ``genid.start_resync_source`` and sends a StateExchange with the
new identifiers; the target, on that StateExchange, applies
``start_resync_target`` with the source's bitmap identifier, marks itself
Inconsistent, persists its merged bitmap, and only then requests data.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from tandem.volume.auth import Handshake
from tandem.volume.genid import SplitBrainPolicy, SyncDecision, SyncFlags, decide_sync
from tandem.volume.seal import TAG_SIZE, Opener, Sealer
from tandem.volume.states import ConnectionState, Role
from tandem.volume.wire import (
    DEFAULT_MAX_PAYLOAD,
    MAX_REASON,
    NEED_DATA,
    AckRange,
    AuthOk,
    AuthResponse,
    BitmapChunk,
    Buffer,
    Disconnect,
    Flush,
    FlushAck,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Message,
    NeedData,
    Ping,
    Pong,
    ProtocolError,
    RemoteProtocolError,
    ResyncData,
    ResyncDataBatch,
    ResyncDone,
    ResyncRequest,
    ResyncRequests,
    StateExchange,
    VerifyDigests,
    VerifyRequest,
    Write,
    WriteAck,
    encode,
    encode_parts,
)


class Dir(Enum):
    SEND = "send"
    RECV = "recv"


class Trigger(Enum):
    """Inputs that come from decisions inside the machine, not from a frame."""

    AUTHENTICATED = "authenticated"
    IN_SYNC = "in-sync"
    SYNC_AS_SOURCE = "sync-as-source"
    SYNC_AS_TARGET = "sync-as-target"
    REFUSED = "refused"
    BITMAPS_EXCHANGED = "bitmaps-exchanged"
    TIMED_OUT = "timed-out"
    SEND_FAILED = "send-failed"
    EOF = "eof"


class TickAction(StrEnum):
    """What ``tick()`` asks of the driver."""

    SEND_PING = "send-ping"  #: a Ping is queued: flush data_to_send()
    PEER_DEAD = "peer-dead"  #: the link timed out: close the socket


# --- events handed to the driver -----------------------------------------


@dataclass(frozen=True, slots=True)
class Authenticated:
    peer_node: str


@dataclass(frozen=True, slots=True)
class SyncDecided:
    """The outcome of the state exchange; ``refused`` means StandAlone."""

    decision: SyncDecision
    refused: bool
    reason: str
    local: StateExchange
    peer: StateExchange
    #: refused for now only: a split-brain policy could not pick a side, or the roles
    #: were wrong (both Primary: one of them is being demoted); the driver tries
    #: again after a while or at its next role change
    retry_later: bool = False


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: ConnectionState
    new: ConnectionState
    reason: str


@dataclass(frozen=True, slots=True)
class WritesAcked:
    """The peer wrote these of our Writes (protocol C: they may complete)."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FlushCompleted:
    """Our Flush with this seq and every Write before it are durable on the peer."""

    seq: int


Event = (
    Authenticated
    | SyncDecided
    | StateChanged
    | WritesAcked
    | FlushCompleted
    | StateExchange
    | Write
    | Flush
    | ResyncRequest
    | ResyncRequests
    | ResyncData
    | ResyncDataBatch
    | ResyncDone
    | BitmapChunk
    | VerifyRequest
    | VerifyDigests
    | Disconnect
)

# --- what an authenticated peer may ask of us at once ------------------------
MAX_RESYNC_ASKED = 256 << 20
"""Bytes of resync data the peer may have asked of us and not yet had: ours asks at
most a 64 MiB window (replicator.RESYNC_WINDOW). Beyond it, a peer's requests would
queue reads, and their ranges memory, without bound (review 35)."""
MAX_VERIFY_ASKED = 16
"""VerifyRequests unanswered at once (ours keeps replicator.VERIFY_WINDOW, 4, in
flight): each is a read of up to 1 MiB on the receiver thread."""

# --- the transition table -------------------------------------------------

_S = ConnectionState
SAME = None
_Input = tuple[Dir, type] | Trigger

_AUTH: dict[_Input, ConnectionState | None] = {
    (d, t): SAME for d in Dir for t in (Hello, AuthResponse, AuthOk)
}
_PING: dict[_Input, ConnectionState | None] = {(d, t): SAME for d in Dir for t in (Ping, Pong)}
_DATA: dict[_Input, ConnectionState | None] = {
    (d, t): SAME for d in Dir for t in (Write, WriteAck, AckRange, Flush, FlushAck, StateExchange)
}
_END: dict[_Input, ConnectionState | None] = {
    (Dir.SEND, Disconnect): _S.UNCONNECTED,
    (Dir.RECV, Disconnect): _S.UNCONNECTED,
    Trigger.TIMED_OUT: _S.TIMEOUT,
    Trigger.SEND_FAILED: _S.NETWORK_FAILURE,
    Trigger.EOF: _S.NETWORK_FAILURE,
}
_LIVE = {**_PING, **_END}

TRANSITIONS: dict[ConnectionState, dict[_Input, ConnectionState | None]] = {
    _S.CONNECTING: {**_AUTH, **_END, Trigger.AUTHENTICATED: _S.WF_REPORT_PARAMS},
    _S.WF_REPORT_PARAMS: {
        **_LIVE,
        (Dir.SEND, StateExchange): SAME,
        (Dir.RECV, StateExchange): SAME,
        Trigger.IN_SYNC: _S.CONNECTED,
        Trigger.SYNC_AS_SOURCE: _S.WF_BITMAP_S,
        Trigger.SYNC_AS_TARGET: _S.WF_BITMAP_T,
        Trigger.REFUSED: _S.STANDALONE,
    },
    _S.WF_BITMAP_S: {
        **_LIVE,
        **_DATA,
        (Dir.SEND, BitmapChunk): SAME,
        (Dir.RECV, BitmapChunk): SAME,
        Trigger.BITMAPS_EXCHANGED: _S.SYNC_SOURCE,
    },
    _S.WF_BITMAP_T: {
        **_LIVE,
        **_DATA,
        (Dir.SEND, BitmapChunk): SAME,
        (Dir.RECV, BitmapChunk): SAME,
        Trigger.BITMAPS_EXCHANGED: _S.SYNC_TARGET,
    },
    _S.SYNC_SOURCE: {
        **_LIVE,
        **_DATA,
        (Dir.RECV, ResyncRequest): SAME,
        (Dir.RECV, ResyncRequests): SAME,
        (Dir.SEND, ResyncData): SAME,
        (Dir.SEND, ResyncDataBatch): SAME,
        (Dir.RECV, ResyncDone): _S.CONNECTED,
    },
    _S.SYNC_TARGET: {
        **_LIVE,
        **_DATA,
        (Dir.SEND, ResyncRequest): SAME,
        (Dir.SEND, ResyncRequests): SAME,
        (Dir.RECV, ResyncData): SAME,
        (Dir.RECV, ResyncDataBatch): SAME,
        (Dir.SEND, ResyncDone): _S.CONNECTED,
    },
    _S.CONNECTED: {
        **_LIVE,
        **_DATA,
        **{(d, t): SAME for d in Dir for t in (VerifyRequest, VerifyDigests)},
    },
}
"""``state -> {input -> next state}``; SAME (None) stays. Terminal states have no row."""

_AUTOMATIC = (Hello, AuthResponse, AuthOk, Ping, Pong)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Static parameters of one link. ``nonce`` must be fresh per connection."""

    node: str
    secret: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    initiator: bool
    ping_interval: float = 1.0
    ping_timeout: float = 2.0
    handshake_timeout: float = 10.0
    split_brain_policy: SplitBrainPolicy = SplitBrainPolicy.DISCONNECT
    max_payload: int = DEFAULT_MAX_PAYLOAD
    #: seal every frame after the handshake (seal.py). Off only in the deterministic
    #: simulation (tandem.sim), whose recorded seeds replay only with the byte counts
    #: they were found with, and whose simulated TCP cannot alter a frame.
    seal_frames: bool = True


class _Ledger:
    """Ordered requests (Writes, Flushes) travelling in one direction.

    Sequence numbers increase strictly, so dicts keep outstanding writes in
    seq order and the oldest one is the first key. ``err`` is the exception
    to raise: Local for what we send, Remote for what the peer sends.
    """

    __slots__ = ("last_seq", "writes", "flushes")

    def __init__(self) -> None:
        self.last_seq = 0
        self.writes: dict[int, None] = {}
        self.flushes: dict[int, bool] = {}  # seq -> FlushAck seen

    def add(self, msg: Write | Flush, err: type[ProtocolError]) -> None:
        if msg.seq <= self.last_seq:
            raise err(f"{type(msg).__name__} seq {msg.seq} not above the previous {self.last_seq}")
        self.last_seq = msg.seq
        if isinstance(msg, Write):
            self.writes[msg.seq] = None
        else:
            self.flushes[msg.seq] = False

    def ack(self, msg: WriteAck | AckRange, err: type[ProtocolError]) -> tuple[int, ...]:
        if isinstance(msg, WriteAck):
            if msg.seq not in self.writes:
                raise err(f"ack for seq {msg.seq}, which is not an outstanding Write")
            del self.writes[msg.seq]
            return (msg.seq,)
        first, last = msg.first, msg.last
        if last > self.last_seq:
            raise err(f"AckRange up to {last}, beyond the last seq {self.last_seq}")
        if last - first < len(self.writes):
            acked = tuple(s for s in range(first, last + 1) if s in self.writes)
        else:
            acked = tuple(s for s in self.writes if first <= s <= last)
        if not acked:
            raise err(f"AckRange {first}..{last} acknowledges no outstanding Write")
        for s in acked:
            del self.writes[s]
        return acked

    def oldest_write(self) -> int | None:
        return next(iter(self.writes), None)

    def writes_before_done(self, seq: int) -> bool:
        oldest = self.oldest_write()
        return oldest is None or oldest > seq

    def flush_acked(self, seq: int, err: type[ProtocolError]) -> None:
        if self.flushes.get(seq) is not False:
            raise err(f"FlushAck for seq {seq}, which is not an outstanding Flush")
        self.flushes[seq] = True

    def completed_flushes(self) -> list[int]:
        if not self.flushes:
            return []  # every ack asks: usually nothing to look at
        done = [s for s, acked in self.flushes.items() if acked and self.writes_before_done(s)]
        for s in done:
            del self.flushes[s]
        return done


class PeerConnection:
    """One replication link; see the module docstring for the rules."""

    def __init__(self, config: PeerConfig, *, now: float):
        self.config = config
        self._state = _S.CONNECTING
        # _state.is_terminal (a Python property and a set lookup) was asked several
        # times per frame: kept as a plain bool, updated with _state.
        self._terminal = False
        self._row_state: ConnectionState | None = None
        self._rows: tuple[dict, dict] = _NO_ROWS
        self._decoder = FrameDecoder(config.max_payload)
        self._auth = Handshake(
            secret=config.secret,
            node=config.node,
            nonce=config.nonce,
            initiator=config.initiator,
        )
        self._events: deque[Event] = deque()
        # Automatic frames not yet taken, each with "seal it": sealed only as they
        # leave, so that the order of sealing is the order on the wire.
        self._outbox: list[tuple[bytes, bool]] = []
        self._sealer: Sealer | None = None  # from our AuthOk on
        self._error: ProtocolError | None = None
        self.local_status: StateExchange | None = None
        self.peer_status: StateExchange | None = None
        self.decision: SyncDecided | None = None
        # ordered requests: ours to the peer, and the peer's to us
        self._tx = _Ledger()
        self._rx = _Ledger()
        self._seq_alloc = 0
        # bitmap exchange and resync bookkeeping
        self._bitmap_sent_last = False
        self._bitmap_received_last = False
        self._rs_out: dict[int, int] = {}  # target: offset -> length requested
        self._rs_in: dict[int, int] = {}  # source: offset -> length asked of us
        self._rs_in_bytes = 0  # their sum (MAX_RESYNC_ASKED)
        self._verify_out: dict[int, int] = {}  # offset -> expected digest count
        self._verify_in: dict[int, int] = {}
        self.resync_bytes = 0
        # liveness
        self._started = now
        self._last_heard = now
        self._heard = False
        self._ping_nonce: int | None = None
        self._ping_sent_at = 0.0
        self._next_nonce = 1
        self._emit(self._auth.hello())

    def __repr__(self) -> str:
        return f"<PeerConnection {self.config.node}->{self.peer_node} {self._state}>"

    # --- introspection ---

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def peer_node(self) -> str | None:
        return self._auth.peer_node if self._auth.done else None

    @property
    def error(self) -> ProtocolError | None:
        """The error that poisoned the link, if any."""
        return self._error

    @property
    def terminal(self) -> bool:
        """``state.is_terminal``, as a plain attribute (asked per received frame)."""
        return self._terminal

    @property
    def has_output(self) -> bool:
        """Automatic frames wait for :meth:`data_to_send`."""
        return bool(self._outbox)

    @property
    def has_events(self) -> bool:
        """Events wait to be pulled with :meth:`next_event` (without decoding more)."""
        return bool(self._events)

    @property
    def in_flight_writes(self) -> int:
        return len(self._tx.writes)

    @property
    def pending_flushes(self) -> int:
        return len(self._tx.flushes)

    @property
    def unacked_received_writes(self) -> int:
        return len(self._rx.writes)

    @property
    def resync_outstanding(self) -> int:
        """Resync requests in flight (target) or not yet answered (source)."""
        return len(self._rs_out) + len(self._rs_in)

    def allocate_seq(self) -> int:
        """A fresh sequence number for the next Write or Flush we send."""
        self._seq_alloc = max(self._seq_alloc, self._tx.last_seq) + 1
        return self._seq_alloc

    # --- the three sans-IO calls ---

    def receive_bytes(self, data: Buffer, borrow: bool = False, keep_tail: bool = False) -> None:
        """Feed bytes from the socket; ``b""`` signals end of stream. ``borrow``
        and ``keep_tail``: see :class:`FrameDecoder` (pull events until NEED_DATA
        before reusing ``data``; Write/ResyncData data are views into it)."""
        if self._error is not None or self._terminal:
            return
        if data:
            # Any bytes are a sign of life, also the start of a frame that takes longer
            # than the ping timeout to arrive on a slow link (resync data at 4 Mbit/s:
            # the target timed out every half second and never finished).
            self._heard = True
            self._decoder.feed(data, borrow, keep_tail)
            return
        reason = "peer closed the connection"
        if self._decoder.buffered:
            reason += " in the middle of a frame"
        self._fire(Trigger.EOF, reason)

    def note_alive(self) -> None:
        """The driver saw the peer make progress without a frame from it: its TCP
        acknowledged more of our data (our frames queue behind a slow link, and the
        peer's answer to a ping waits behind them)."""
        self._heard = True

    def release_received(self) -> int:
        """See :meth:`FrameDecoder.release_lent`."""
        return self._decoder.release_lent()

    def next_event(self) -> Event | NeedData:
        """The next event for the driver, or NEED_DATA; raises if poisoned."""
        if self._error is not None:
            raise self._error
        while not self._events:
            if self._terminal:
                return NEED_DATA
            try:
                msg = self._decoder.next_event()
                if msg is NEED_DATA:
                    return NEED_DATA
                self._heard = True
                self._input(Dir.RECV, msg)
            except ProtocolError as exc:
                self._poison(exc)
                raise
        return self._events.popleft()

    def send(self, msg: Message) -> bytes:
        """Validate ``msg`` against the state machine; return all bytes to send.

        The result starts with any automatic frames still queued, so the
        order on the wire stays right. Raises LocalProtocolError (and
        poisons the link) if the message is not allowed now.
        """
        return b"".join(self.send_parts(msg))

    @property
    def sealed(self) -> bool:
        """Our frames after the handshake are sealed (seal.py)."""
        return self._sealer is not None

    def send_parts(self, msg: Message) -> list[Buffer]:
        """Like :meth:`send`, as buffers for ``sendmsg``."""
        self._check_usable()
        before, self._outbox = self._outbox, []
        try:
            if isinstance(msg, _AUTOMATIC):
                raise LocalProtocolError(f"{type(msg).__name__} frames are sent automatically")
            parts = encode_parts(msg)
            self._input(Dir.SEND, msg)
        except ProtocolError as exc:
            self._outbox = before + self._outbox
            self._poison(exc)
            raise
        # Frames this message made the machine queue go after it: sending our
        # StateExchange decides the handshake, and a refusal's Disconnect sent ahead
        # of it left the peer without our state (it saw a bare disconnect).
        out = self._leave(before) if before else []  # rare: no new list per Write otherwise
        sealer = self._sealer
        if sealer is None:
            out.extend(parts)
        elif out:
            out.extend(sealer.seal(parts))
        else:
            out = sealer.seal(parts)
        if self._outbox:
            out.extend(self._leave(self._outbox))
            self._outbox = []
        return out

    def data_to_send(self) -> bytes:
        """Automatic frames queued by received messages or ``tick()``."""
        out, self._outbox = self._outbox, []
        return b"".join(self._leave(out))

    def _leave(self, frames: list[tuple[bytes, bool]]) -> list[Buffer]:
        out: list[Buffer] = []
        for frame, sealed in frames:
            if sealed:
                assert self._sealer is not None
                out.extend(self._sealer.seal([frame]))
            else:
                out.append(frame)
        return out

    def send_failed(self) -> None:
        """The driver could not send: the link is down (NetworkFailure)."""
        if self._error is None and not self._state.is_terminal:
            self._fire(Trigger.SEND_FAILED, "sending to the peer failed")

    def tick(self, now: float) -> list[TickAction]:
        """Advance time: returns SEND_PING and/or PEER_DEAD."""
        if self._error is not None or self._state.is_terminal:
            return []
        if self._heard:
            self._heard = False
            self._last_heard = now
        established = self._state not in (_S.CONNECTING, _S.WF_REPORT_PARAMS)
        if not established and now - self._started >= self.config.handshake_timeout:
            self._fire(Trigger.TIMED_OUT, "handshake did not finish in time")
            return [TickAction.PEER_DEAD]
        if self._state is _S.CONNECTING:
            return []
        if self._ping_nonce is not None:
            # The pong is owed: silence from the later of the ping and the last sign of
            # life. (Measured from the ping alone, a frame heard after it and then a
            # partition left the pong missing and the peer alive forever.)
            if now - max(self._ping_sent_at, self._last_heard) >= self.config.ping_timeout:
                self._fire(Trigger.TIMED_OUT, f"no answer to a ping for {self.config.ping_timeout}s")
                return [TickAction.PEER_DEAD]
            return []
        if now - self._last_heard >= self.config.ping_interval:
            self._ping_nonce, self._ping_sent_at = self._next_nonce, now
            self._next_nonce += 1
            self._emit(Ping(self._ping_nonce))
            return [TickAction.SEND_PING]
        return []

    # --- machinery ---

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._terminal:
            raise LocalProtocolError(f"the link is closed ({self._state})")

    def _poison(self, exc: ProtocolError) -> None:
        if self._error is not None:
            return
        self._error = exc
        if not self._terminal:
            self._outbox.append((_disconnect_frame(f"protocol error: {exc.reason}"),
                                 self._sealer is not None))
        self._state = _S.PROTOCOL_ERROR
        self._terminal = True

    def _set_state(self, new: ConnectionState, reason: str) -> None:
        if new is not self._state:
            self._events.append(StateChanged(self._state, new, reason))
            self._state = new
            self._terminal = new.is_terminal

    def _fire(self, trigger: Trigger, reason: str) -> None:
        nxt = TRANSITIONS.get(self._state, {}).get(trigger, SAME)
        if nxt is SAME:
            raise LocalProtocolError(f"{trigger.value} is not possible in state {self._state}")
        self._set_state(nxt, reason)

    def _input(self, direction: Dir, msg: Message) -> None:
        state = self._state
        if state is not self._row_state:  # enum hashing is slow: look rows up per state change
            self._row_state = state
            self._rows = _FAST_ROWS.get(state, _NO_ROWS)
        entry = self._rows[direction is Dir.RECV].get(type(msg))
        if entry is None:
            err = RemoteProtocolError if direction is Dir.RECV else LocalProtocolError
            verb = "received" if direction is Dir.RECV else "sent"
            raise err(f"{type(msg).__name__} {verb} in state {self._state}")
        nxt, handler = entry
        if handler is not None:
            handler(self, msg)
        if nxt is not SAME:
            self._set_state(nxt, f"{type(msg).__name__} {direction.value}")

    def _emit(self, msg: Message) -> None:
        """Queue an automatic frame (still checked against the table)."""
        self._input(Dir.SEND, msg)
        self._outbox.append((encode(msg), self._sealer is not None))

    # --- handlers: validation and bookkeeping of one input ---

    def _on_auth(self, msg: Message) -> None:
        for reply in self._auth.receive(msg):
            self._emit(reply)
            if type(reply) is AuthOk and self.config.seal_frames:  # our frames after it are sealed
                self._sealer = Sealer(self._auth.frame_keys()[0])
        if type(msg) is AuthOk and self.config.seal_frames:  # the peer's frames after it are sealed
            self._decoder.open_with(Opener(self._auth.frame_keys()[1]), TAG_SIZE)
        if self._auth.done and self._state is _S.CONNECTING:
            peer = self._auth.peer_node or "?"
            self._events.append(Authenticated(peer))
            self._fire(Trigger.AUTHENTICATED, f"authenticated {peer}")

    def _on_send_state(self, msg: StateExchange) -> None:
        if msg.split_brain_policy is not self.config.split_brain_policy:
            raise LocalProtocolError(f"StateExchange announces split-brain policy"
                                     f" {msg.split_brain_policy}, the link uses"
                                     f" {self.config.split_brain_policy}")
        if self._both_primary(msg, self.peer_status):
            raise LocalProtocolError("cannot become Primary while the peer is Primary")
        self.local_status = msg
        if self._state is _S.WF_REPORT_PARAMS:
            self._maybe_decide()

    def _on_recv_state(self, msg: StateExchange) -> None:
        if self._both_primary(self.local_status, msg):
            raise RemoteProtocolError("peer became Primary while we are Primary")
        self.peer_status = msg
        if self._state is _S.WF_REPORT_PARAMS:
            self._maybe_decide()
        else:
            self._events.append(msg)

    def _both_primary(self, local: StateExchange | None, peer: StateExchange | None) -> bool:
        """Two Primaries on a live link (after the decision) is never allowed."""
        if self._state is _S.WF_REPORT_PARAMS or local is None or peer is None:
            return False  # at connect time this is a refusal, not an error
        return local.role is Role.PRIMARY and peer.role is Role.PRIMARY

    def _maybe_decide(self) -> None:
        local, peer = self.local_status, self.peer_status
        if local is None or peer is None:
            return
        flags = [
            SyncFlags(
                node=name,
                disk=s.disk,
                role=s.role,
                crashed_primary=s.crashed_primary,
                discard_my_data=s.discard_my_data,
                lost_leadership=s.lost_leadership,
                primary_epoch=s.primary_epoch,
                bitmap_weight=s.bitmap_weight,
                vouches_for_peer=s.vouches_for_peer,
            )
            for name, s in ((self.config.node, local), (self._auth.peer_node or "", peer))
        ]
        decision = decide_sync(
            local.generations,
            peer.generations,
            flags[0],
            flags[1],
            self.config.split_brain_policy,
        )
        refusal = _refusal(decision, local, peer)
        reason = refusal or decision.reason
        retry = refusal is not None and (decision.policy_undecided or refusal in _ROLE_REFUSALS)
        self.decision = SyncDecided(decision, refusal is not None, reason, local, peer, retry)
        self._events.append(self.decision)
        if refusal is not None:
            self._fire(Trigger.REFUSED, refusal)
            self._outbox.append((_disconnect_frame(refusal), self._sealer is not None))
        elif decision.outcome.is_source:
            self._fire(Trigger.SYNC_AS_SOURCE, reason)
        elif decision.outcome.is_target:
            self._fire(Trigger.SYNC_AS_TARGET, reason)
        else:
            self._fire(Trigger.IN_SYNC, reason)

    def _on_send_write(self, msg: Write) -> None:
        if self.local_status is None or self.local_status.role is not Role.PRIMARY:
            raise LocalProtocolError("only a Primary sends Writes (send a StateExchange first)")
        self._tx.add(msg, LocalProtocolError)

    def _in_volume(self, what: str, offset: int, length: int) -> None:
        """A range the peer asks us to write, read or hash must lie inside the volume:
        a write past its end would grow the backing file, a read past it comes back
        short and fails our disk."""
        local = self.local_status
        if local is None or offset + length > local.size:
            raise RemoteProtocolError(f"{what} of {length} bytes at {offset} is outside the"
                                      f" volume ({local.size if local else 'unknown'} bytes)")

    def _on_recv_write(self, msg: Write) -> None:
        if self.peer_status is None or self.peer_status.role is not Role.PRIMARY:
            raise RemoteProtocolError("Write from a peer that is not Primary")
        self._in_volume("Write", msg.offset, len(msg.data))
        self._rx.add(msg, RemoteProtocolError)
        self._events.append(msg)

    def _on_send_flush(self, msg: Flush) -> None:
        self._tx.add(msg, LocalProtocolError)

    def _on_recv_flush(self, msg: Flush) -> None:
        self._rx.add(msg, RemoteProtocolError)
        self._events.append(msg)

    def _on_send_ack(self, msg: WriteAck | AckRange) -> None:
        self._rx.ack(msg, LocalProtocolError)

    def _on_recv_ack(self, msg: WriteAck | AckRange) -> None:
        self._events.append(WritesAcked(self._tx.ack(msg, RemoteProtocolError)))
        self._flushes_done()

    def _on_send_flush_ack(self, msg: FlushAck) -> None:
        if self._rx.flushes.get(msg.seq) is None:
            raise LocalProtocolError(f"FlushAck for seq {msg.seq}, which was not received")
        if not self._rx.writes_before_done(msg.seq):
            raise LocalProtocolError(f"FlushAck {msg.seq} before Write {self._rx.oldest_write()} was acked")
        del self._rx.flushes[msg.seq]

    def _on_recv_flush_ack(self, msg: FlushAck) -> None:
        self._tx.flush_acked(msg.seq, RemoteProtocolError)
        self._flushes_done()

    def _flushes_done(self) -> None:
        for seq in self._tx.completed_flushes():
            self._events.append(FlushCompleted(seq))

    def _on_send_chunk(self, msg: BitmapChunk) -> None:
        if self._bitmap_sent_last:
            raise LocalProtocolError("BitmapChunk after the last one")
        self._bitmap_sent_last = msg.last
        self._bitmaps_done()

    def _on_recv_chunk(self, msg: BitmapChunk) -> None:
        if self._bitmap_received_last:
            raise RemoteProtocolError("BitmapChunk after the last one")
        local = self.local_status
        if local is not None and local.block_size > 0:
            nbits = -(-local.size // local.block_size)  # one bit per block, rounded up
            end = (nbits + 7) // 8  # the raw bitmap's bytes (DirtyBitmap.raw)
            if msg.offset + len(msg.data) > end:
                raise RemoteProtocolError(f"BitmapChunk of {len(msg.data)} bytes at {msg.offset}"
                                          f" is outside the {end}-byte bitmap")
        self._bitmap_received_last = msg.last
        self._events.append(msg)
        self._bitmaps_done()

    def _bitmaps_done(self) -> None:
        if self._bitmap_sent_last and self._bitmap_received_last:
            self._fire(Trigger.BITMAPS_EXCHANGED, "dirty bitmaps exchanged")

    def _on_send_rs_request(self, msg: ResyncRequest) -> None:
        if msg.offset in self._rs_out:
            raise LocalProtocolError(f"ResyncRequest at {msg.offset} already in flight")
        self._rs_out[msg.offset] = msg.length

    def _asked(self, offset: int, length: int) -> None:
        """One more range the peer asks us to resync: inside the volume, not asked
        already, and within MAX_RESYNC_ASKED of what it asked and has not had yet."""
        self._in_volume("ResyncRequest", offset, length)
        if offset in self._rs_in:
            raise RemoteProtocolError(f"duplicate ResyncRequest at {offset}")
        self._rs_in_bytes += length
        if self._rs_in_bytes > MAX_RESYNC_ASKED:
            raise RemoteProtocolError(f"resync requests for more than {MAX_RESYNC_ASKED >> 20} MiB"
                                      " at once")
        self._rs_in[offset] = length

    def _on_recv_rs_request(self, msg: ResyncRequest) -> None:
        self._asked(msg.offset, msg.length)
        self._events.append(msg)

    def _on_send_rs_data(self, msg: ResyncData) -> None:
        if self._rs_in.get(msg.offset) != len(msg.data):
            raise LocalProtocolError(f"ResyncData at {msg.offset} answers no request")
        del self._rs_in[msg.offset]
        self._rs_in_bytes -= len(msg.data)
        self.resync_bytes += len(msg.data)

    def _on_recv_rs_data(self, msg: ResyncData) -> None:
        if self._rs_out.get(msg.offset) != len(msg.data):
            raise RemoteProtocolError(f"ResyncData at {msg.offset} answers no request")
        del self._rs_out[msg.offset]
        self.resync_bytes += len(msg.data)
        self._events.append(msg)

    def _on_send_rs_requests(self, msg: ResyncRequests) -> None:
        out = self._rs_out
        for offset, length in msg.ranges:
            if offset in out:
                raise LocalProtocolError(f"ResyncRequest at {offset} already in flight")
            out[offset] = length

    def _on_recv_rs_requests(self, msg: ResyncRequests) -> None:
        for offset, length in msg.ranges:
            self._asked(offset, length)
        self._events.append(msg)

    def _on_send_rs_batch(self, msg: ResyncDataBatch) -> None:
        pending = self._rs_in
        for offset, length in msg.ranges:
            if pending.pop(offset, None) != length:
                raise LocalProtocolError(f"ResyncDataBatch range at {offset} answers no request")
            self._rs_in_bytes -= length
        self.resync_bytes += len(msg.data)

    def _on_recv_rs_batch(self, msg: ResyncDataBatch) -> None:
        out = self._rs_out
        for offset, length in msg.ranges:
            if out.pop(offset, None) != length:
                raise RemoteProtocolError(f"ResyncDataBatch range at {offset} answers no request")
        self.resync_bytes += len(msg.data)
        self._events.append(msg)

    def _on_send_rs_done(self, msg: ResyncDone) -> None:
        if self._rs_out:
            raise LocalProtocolError(f"ResyncDone with {len(self._rs_out)} requests in flight")

    def _on_recv_rs_done(self, msg: ResyncDone) -> None:
        if self._rs_in:
            raise RemoteProtocolError(f"ResyncDone with {len(self._rs_in)} requests unanswered")
        self._events.append(msg)

    def _on_send_verify_req(self, msg: VerifyRequest) -> None:
        # An answer could not tell two requests at one offset apart: the second run
        # of a verify must wait for the first one's answers (Replicator.verify).
        if msg.offset in self._verify_out:
            raise LocalProtocolError(f"VerifyRequest at {msg.offset} already in flight")
        self._verify_out[msg.offset] = -(-msg.length // msg.blocksize)

    def _on_recv_verify_req(self, msg: VerifyRequest) -> None:
        self._in_volume("VerifyRequest", msg.offset, msg.length)
        if msg.offset in self._verify_in:
            raise RemoteProtocolError(f"duplicate VerifyRequest at {msg.offset}")
        if len(self._verify_in) >= MAX_VERIFY_ASKED:
            raise RemoteProtocolError(f"more than {MAX_VERIFY_ASKED} VerifyRequests unanswered")
        self._verify_in[msg.offset] = -(-msg.length // msg.blocksize)
        self._events.append(msg)

    @property
    def verify_in_flight(self) -> int:
        """Our VerifyRequests not answered yet (an aborted run's too)."""
        return len(self._verify_out)

    def _on_send_digests(self, msg: VerifyDigests) -> None:
        if self._verify_in.pop(msg.offset, None) != len(msg.digests):
            raise LocalProtocolError(f"VerifyDigests at {msg.offset} answer no request")

    def _on_recv_digests(self, msg: VerifyDigests) -> None:
        if self._verify_out.pop(msg.offset, None) != len(msg.digests):
            raise RemoteProtocolError(f"VerifyDigests at {msg.offset} answer no request")
        self._events.append(msg)

    def _on_recv_ping(self, msg: Ping) -> None:
        self._emit(Pong(msg.nonce))

    def _on_recv_pong(self, msg: Pong) -> None:
        if msg.nonce != self._ping_nonce:
            raise RemoteProtocolError(f"Pong {msg.nonce} answers no Ping")
        self._ping_nonce = None

    def _on_recv_disconnect(self, msg: Disconnect) -> None:
        self._events.append(msg)


def _disconnect_frame(reason: str) -> bytes:
    raw = reason.encode()[:MAX_REASON]
    return encode(Disconnect(raw.decode(errors="ignore")))


BOTH_PRIMARY = "both nodes are Primary"
PRIMARY_AS_TARGET = "the Primary would become a sync target"
_ROLE_REFUSALS = (BOTH_PRIMARY, PRIMARY_AS_TARGET)


def _refusal(decision: SyncDecision, local: StateExchange, peer: StateExchange) -> str | None:
    """Why the link must not proceed despite (or because of) the decision."""
    if local.split_brain_policy is not peer.split_brain_policy:
        # Each side applies its own policy: different ones could both keep their data.
        return (f"after-split-brain policies differ ({local.split_brain_policy} here,"
                f" {peer.split_brain_policy} on the peer); both nodes must use the same")
    if decision.outcome.refused:
        return decision.reason
    if local.size != peer.size:
        return f"volume sizes differ ({local.size} here, {peer.size} on the peer)"
    if local.block_size != peer.block_size:
        return f"bitmap block sizes differ ({local.block_size} here, {peer.block_size} there)"
    if local.role is Role.PRIMARY and peer.role is Role.PRIMARY:
        return BOTH_PRIMARY
    out = decision.outcome
    for we_are, ours, theirs in ((out.is_source, local, peer), (out.is_target, peer, local)):
        if we_are:
            if not ours.disk.is_consistent:
                return f"the sync source's disk is {ours.disk}"
            if theirs.role is Role.PRIMARY:
                return PRIMARY_AS_TARGET
    return None


_HANDLERS = {
    **{(Dir.RECV, t): PeerConnection._on_auth for t in (Hello, AuthResponse, AuthOk)},
    (Dir.SEND, StateExchange): PeerConnection._on_send_state,
    (Dir.RECV, StateExchange): PeerConnection._on_recv_state,
    (Dir.SEND, Write): PeerConnection._on_send_write,
    (Dir.RECV, Write): PeerConnection._on_recv_write,
    (Dir.SEND, Flush): PeerConnection._on_send_flush,
    (Dir.RECV, Flush): PeerConnection._on_recv_flush,
    (Dir.SEND, WriteAck): PeerConnection._on_send_ack,
    (Dir.SEND, AckRange): PeerConnection._on_send_ack,
    (Dir.RECV, WriteAck): PeerConnection._on_recv_ack,
    (Dir.RECV, AckRange): PeerConnection._on_recv_ack,
    (Dir.SEND, FlushAck): PeerConnection._on_send_flush_ack,
    (Dir.RECV, FlushAck): PeerConnection._on_recv_flush_ack,
    (Dir.SEND, BitmapChunk): PeerConnection._on_send_chunk,
    (Dir.RECV, BitmapChunk): PeerConnection._on_recv_chunk,
    (Dir.SEND, ResyncRequest): PeerConnection._on_send_rs_request,
    (Dir.RECV, ResyncRequest): PeerConnection._on_recv_rs_request,
    (Dir.SEND, ResyncData): PeerConnection._on_send_rs_data,
    (Dir.RECV, ResyncData): PeerConnection._on_recv_rs_data,
    (Dir.SEND, ResyncRequests): PeerConnection._on_send_rs_requests,
    (Dir.RECV, ResyncRequests): PeerConnection._on_recv_rs_requests,
    (Dir.SEND, ResyncDataBatch): PeerConnection._on_send_rs_batch,
    (Dir.RECV, ResyncDataBatch): PeerConnection._on_recv_rs_batch,
    (Dir.SEND, ResyncDone): PeerConnection._on_send_rs_done,
    (Dir.RECV, ResyncDone): PeerConnection._on_recv_rs_done,
    (Dir.SEND, VerifyRequest): PeerConnection._on_send_verify_req,
    (Dir.RECV, VerifyRequest): PeerConnection._on_recv_verify_req,
    (Dir.SEND, VerifyDigests): PeerConnection._on_send_digests,
    (Dir.RECV, VerifyDigests): PeerConnection._on_recv_digests,
    (Dir.RECV, Ping): PeerConnection._on_recv_ping,
    (Dir.RECV, Pong): PeerConnection._on_recv_pong,
    (Dir.RECV, Disconnect): PeerConnection._on_recv_disconnect,
}

_NO_ROWS: tuple[dict, dict] = ({}, {})
_FAST_ROWS: dict[ConnectionState, tuple[dict, dict]] = {
    state: tuple(  # type: ignore[misc]
        {key[1]: (nxt, _HANDLERS.get(key)) for key, nxt in row.items()
         if isinstance(key, tuple) and key[0] is d}
        for d in (Dir.SEND, Dir.RECV))
    for state, row in TRANSITIONS.items()
}
"""TRANSITIONS and _HANDLERS by state, then (send, recv), then message type: the
per-frame lookup of :meth:`PeerConnection._input` without hashing enums."""
