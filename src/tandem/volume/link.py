"""The thin threaded driver around one `PeerConnection`: a socket, a receiver
thread, and locks.

Threads instead of asyncio because the callers are FUSE worker threads blocked
in the kernel: a write must go from a worker to the socket with no hand-off to
another thread, and each hand-off costs tens of microseconds. Two locks:

* `state_lock` guards the sans-IO state machine; it is never held across I/O.
* `send_lock` keeps frames whole and in sequence order on the socket; sequence
  numbers are allocated under it, so wire order == sequence order. Frames are
  sealed (seal.py) as they leave the state machine, and the n-th sealed frame
  must be the n-th on the wire: whatever takes frames out of the machine holds
  `send_lock` until they are on the socket.

The receiver thread never waits for anything but the socket and `send_lock`;
acknowledgements are coalesced per batch of received frames. Events that our
own sends cause while a batch is handled (our last BitmapChunk makes us
SyncSource) are handed over right after it, not at the next receive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tandem.volume import wire
from tandem.volume.peer import Event, PeerConfig, PeerConnection, TickAction
from tandem.volume.states import ConnectionState

_TCP_INFO_LEN = 136
_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64) in struct tcp_info (Linux >= 4.1)

log = logging.getLogger("tandem.volume.link")

RECV_SIZE = 4 << 20
HOT_THREAD_NICE = -10
"""Niceness of the threads on the I/O path (FUSE workers, link receivers). Like a
kernel block driver, the volume serves other processes' I/O: a commit waits on
several of its thread wakeups, so they should not queue behind ordinary work."""


class _RateLimitedWarning:
    """At most one warning a second; the ones left out are counted in the next.
    Connections from the peer's address that send garbage must not flood the log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = -1.0
        self._left_out = 0

    def log(self, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < 1.0:
                self._left_out += 1
                left_out = -1
            else:
                self._last, left_out, self._left_out = now, self._left_out, 0
        if left_out < 0:
            log.debug(fmt, *args)
        elif left_out:
            log.warning(fmt + " (%d more like it since the last one, not logged)", *args, left_out)
        else:
            log.warning(fmt, *args)


_protocol_errors = _RateLimitedWarning()


def boost_thread(nice: int = HOT_THREAD_NICE) -> bool:
    """Give the calling thread (not the process) a higher scheduling priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return True
    except OSError:
        return False


def tune_socket(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)


class Waiter:
    """One request waiting for the peer; completes exactly once, and waiting
    costs one lock acquire (the receiver thread releases it)."""

    __slots__ = ("_lock", "error", "completed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.error: OSError | None = None
        self.completed = False

    def done(self, error: OSError | None = None) -> None:
        self.error = error
        self.completed = True
        self._lock.release()

    def wait(self, timeout: float = -1) -> bool:
        return self._lock.acquire(timeout=timeout)


class Link:
    """One authenticated replication connection. `on_events(link, events)` is
    called from the receiver thread with every batch of events; `on_closed(link,
    reason)` once when the link ends, whatever ended it."""

    def __init__(self, sock: socket.socket, config: PeerConfig,
                 on_events: Callable[[Link, list[Event]], None],
                 on_closed: Callable[[Link, str], None]):
        self.sock = sock
        self.peer = PeerConnection(config, now=time.monotonic())
        self.state_lock = threading.Lock()
        self.send_lock = threading.Lock()
        self._ping_waiting = False  # a ping the ticker could not send yet (the send lock was busy)
        self._acked_seen = 0  # tcpi_bytes_acked at the last tick
        self._on_events = on_events
        self._on_closed = on_closed
        self._closed = threading.Event()
        self.close_reason = ""
        self.bytes_sent = 0
        self.bytes_received = 0
        self.started_at = time.monotonic()
        tune_socket(sock)
        self._thread = threading.Thread(target=self._receive_loop, name="link-recv", daemon=True)

    def start(self) -> None:
        self._send_raw([self._take_automatic()])
        self._thread.start()

    def redirect_events(self, on_events: Callable[[Link, list[Event]], None]) -> None:
        """From the receiver thread (inside `on_events`): later batches go to `on_events`."""
        self._on_events = on_events

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def authenticated(self) -> bool:
        """The peer proved it knows the secret (see tandem.volume.auth)."""
        return self.peer.peer_node is not None

    @property
    def state(self) -> ConnectionState:
        return self.peer.state

    # --- sending -------------------------------------------------------------------
    def send(self, msg: wire.Message, register: Callable[[], Any] | None = None) -> Any:
        """Send one message. `register` runs under the state lock right after the
        state machine accepted it (to record a waiter before any ack can arrive)."""
        with self.send_lock:
            with self.state_lock:
                self._check_open()
                parts = self.peer.send_parts(msg)
                token = register() if register else None
            self._send_raw(parts)
        return token

    def send_write(self, offset: int, data: memoryview | bytes,
                   register: Callable[[int], Any], durable: bool = False) -> Any:
        """Allocate the next sequence number, let `register(seq)` record the waiter,
        and put the Write on the wire."""
        with self.send_lock:
            with self.state_lock:
                self._check_open()
                seq = self.peer.allocate_seq()
                parts = self.peer.send_parts(wire.Write(seq, offset, data, durable))
                token = register(seq)
            self._send_raw(parts)
        return token

    def send_flush(self, register: Callable[[int], Any]) -> Any:
        with self.send_lock:
            with self.state_lock:
                self._check_open()
                seq = self.peer.allocate_seq()
                parts = self.peer.send_parts(wire.Flush(seq))
                token = register(seq)
            self._send_raw(parts)
        return token

    def send_many(self, msgs: list[wire.Message]) -> None:
        if not msgs:
            return
        with self.send_lock:
            parts: list = []
            for m in msgs:  # the state lock per message: sealing takes time, and the receiver needs it
                with self.state_lock:
                    self._check_open()
                    parts.extend(self.peer.send_parts(m))
            self._send_raw(parts)

    def _check_open(self) -> None:
        """Under the state lock. close() sets `closed` under it, then runs the close
        handler, which collects the writes and flushes registered so far (their
        blocks go to the bitmap). A send after that must fail before its register
        callback runs: a write registered on a closed link was neither marked nor
        ever completed, and its block missed the next resync (a receive error closes
        the link with its state machine still Connected, so the machine alone does
        not refuse the send)."""
        if self._closed.is_set():
            raise ConnectionError(f"link closed: {self.close_reason}")

    def _take_automatic(self) -> bytes:
        with self.state_lock:
            return self.peer.data_to_send()

    def _send_raw(self, parts: list) -> None:
        parts = [p for p in parts if len(p)]
        if not parts or self.closed:
            if self.closed:
                raise ConnectionError(f"link closed: {self.close_reason}")
            return
        try:
            self.bytes_sent += self._sendmsg_all(parts, 0)
        except OSError as e:
            with self.state_lock:
                self.peer.send_failed()
            self.close(f"send failed: {e.strerror or e}")
            raise ConnectionError(f"send to peer failed: {e}") from None

    def _sendmsg_all(self, parts: list, flags: int) -> int:
        if not parts:
            return 0
        total = sum(len(p) for p in parts)
        sent = self.sock.sendmsg(parts, [], flags)
        if sent < total:
            # Partial send: flatten what is left (rare, only when buffers fill).
            rest = b"".join(bytes(p) for p in parts)[sent:]
            self.sock.sendall(rest, flags)
        return total

    # --- receiving -----------------------------------------------------------------
    def _receive_loop(self) -> None:
        boost_thread()
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        reason = "receiver ended"
        tail = 0  # buf[:tail]: the start of a frame not complete yet
        try:
            while not self.closed:
                try:
                    n = self.sock.recv_into(view[tail:])
                except OSError as e:
                    reason = f"receive failed: {e.strerror or e}"
                    break
                self.bytes_received += n
                end = tail + n
                events: list[Event] = []
                try:
                    with self.state_lock:
                        # Decoded in place: Write/ResyncData data are views into our
                        # buffer, valid until the next recv, which comes after _on_events.
                        if n:
                            self.peer.receive_bytes(view[:end], borrow=True, keep_tail=True)
                        else:
                            if tail:  # EOF in the middle of a frame: the decoder says so
                                self.peer.receive_bytes(bytes(view[:tail]))
                            self.peer.receive_bytes(b"")
                        while (ev := self.peer.next_event()) is not wire.NEED_DATA:
                            events.append(ev)
                        auto = self.peer.has_output
                except wire.ProtocolError as e:
                    reason = f"protocol error: {e.reason}"
                    _protocol_errors.log("replication link: %s; closing", reason)
                    # The peer's reason for the log there; not if a sender is stuck.
                    if self.send_lock.acquire(timeout=1.0):
                        try:
                            with contextlib.suppress(OSError):
                                self.sock.sendall(self._take_automatic())
                        finally:
                            self.send_lock.release()
                    break
                if auto:  # taken out (sealed) under the send lock: see the module docstring
                    with self.send_lock, contextlib.suppress(ConnectionError):
                        self._send_raw([self._take_automatic()])
                if events:
                    self._on_events(self, events)
                    if self.peer.has_events:  # rare: our own sends moved the machine
                        self._deliver_queued_events()
                if self.peer.terminal:
                    reason = f"link ended: {self.peer.state}"
                    for ev in events:
                        if isinstance(ev, wire.Disconnect):
                            reason = disconnect_reason(ev, self.peer.peer_node is not None)
                    break
                if n == 0:
                    reason = "peer closed the connection"
                    break
                with self.state_lock:
                    tail = self.peer.release_received()
                    if tail > len(buf) // 2:
                        # A frame this large (a raised payload limit) would not fit
                        # behind itself: the decoder keeps it in its own buffer.
                        self.peer.receive_bytes(bytes(view[end - tail:end]))
                        tail = 0
                if tail:  # every event is handled: move the incomplete frame to the front
                    view[:tail] = view[end - tail:end]
        except Exception as e:  # a bug must not leave writers hanging forever
            log.exception("replication receiver crashed")
            reason = f"receiver crashed: {type(e).__name__}: {e}"
        self.close(reason)

    def _deliver_queued_events(self) -> None:
        """Hand over events our own sends queued while the last batch was handled.

        Sending can move the state machine too (our last BitmapChunk makes us
        SyncSource); such an event waits in the machine until someone pulls it.
        Pulled only at the next receive, it waited for the peer's next frame --
        often a ping, a sizeable part of a second -- before the resync started.
        """
        for _ in range(8):  # each round needs a new state change: a few at most
            events: list[Event] = []
            with self.state_lock:
                # Also once terminal: a refusal our own StateExchange decided queues its
                # SyncDecided here, and dropping it left the reason untold (StandAlone
                # with no reason in `status`, no log line; test_different_policies).
                try:
                    while (ev := self.peer.next_event()) is not wire.NEED_DATA:
                        events.append(ev)
                except wire.ProtocolError:
                    return  # the receive loop meets the same error and closes
            if not events:
                return
            self._on_events(self, events)

    # --- time ----------------------------------------------------------------------
    def _peer_took_more(self) -> bool:
        """The peer's TCP acknowledged more of our data since the last tick: its
        process reads (zero-window probes of a frozen one do not count)."""
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        except OSError:
            return False
        if len(info) < _BYTES_ACKED + 8:
            return False
        acked = int.from_bytes(info[_BYTES_ACKED:_BYTES_ACKED + 8], "little")
        more, self._acked_seen = acked > self._acked_seen, acked
        return more

    def tick(self, now: float) -> None:
        if self.closed:
            return
        # Only while a send of ours is under way (our ping queues behind it on a slow
        # link): a frozen peer's kernel still takes a trickle of small frames into its
        # buffer, and that must not keep it alive past the ping timeout.
        more = self._peer_took_more() and self.send_lock.locked()
        with self.state_lock:
            if more:
                self.peer.note_alive()
            actions = self.peer.tick(now)
        if TickAction.PEER_DEAD in actions:
            self.close(f"peer did not answer for {self.peer.config.ping_timeout:.2f}s")
        elif TickAction.SEND_PING in actions or self._ping_waiting:
            # Never wait for the send lock here: its holder may be stuck on a full socket
            # buffer because the network drops everything, and a ticker waiting behind
            # it never declared the peer dead (a resync cut by a partition hung both
            # sides until TCP gave up). Busy: the ping stays queued and leaves with the
            # holder's next frame or at a later tick; the deadline runs meanwhile.
            if self.send_lock.acquire(blocking=False):
                try:
                    self._ping_waiting = False
                    with contextlib.suppress(ConnectionError):
                        self._send_raw([self._take_automatic()])
                finally:
                    self.send_lock.release()
            else:
                self._ping_waiting = True

    # --- ending ----------------------------------------------------------------------
    def disconnect(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            self.send(wire.Disconnect(reason[: wire.MAX_REASON]))
        self.close(reason)

    def close(self, reason: str) -> None:
        with self.state_lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self.close_reason = reason
        self._closed_now(reason)

    def close_if_unauthenticated(self, reason: str) -> bool:
        """Close, unless the peer has authenticated: checked and marked under the state
        lock, where the receiver completes authentication, so a link that has just
        authenticated (its decision perhaps on the way) is never taken for a silent one."""
        with self.state_lock:
            if self._closed.is_set() or self.peer.peer_node is not None:
                return False
            self._closed.set()
            self.close_reason = reason
        self._closed_now(reason)
        return True

    def _closed_now(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        self._on_closed(self, reason)

    @property
    def receiving(self) -> bool:
        """The receiver thread still runs: after a close, it may be inside the
        handler with the rest of a batch it decoded before."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)


def disconnect_reason(ev: wire.Disconnect, authenticated: bool) -> str:
    """The peer's Disconnect as our logs and status show it. Before the handshake is
    over, anyone on the network can send one: its text is not the peer's word, and
    says so. Printable characters only, and at most 200 of them."""
    text = "".join(c if c.isprintable() else "?" for c in ev.reason[:200])
    if authenticated:
        return f"peer disconnected: {text}"
    return f"disconnected before authenticating (its reason, not verified: {text!r})"


def new_nonce() -> bytes:
    return os.urandom(16)
