"""The listening side's replication connections, authenticated side by side.

The replicator has one link slot. The side that listens used to give it to the
first connection it accepted, before that connection proved anything: any
process on the peer's host can bind the peer's replication address (no privilege
needed) and connect. One that stayed silent held the slot for the handshake
timeout (5 s and more); a queue of them, each in turn, kept the real peer out
for as long as they kept coming.

Here every accepted connection from the peer's address runs its handshake at
once, beside the others (at most MAX_PENDING), and only the first to complete
the mutual authentication is offered the slot (`claim`); the rest are closed
then. The real peer answers in a round trip, so silent or stalled connections
cost it nothing while there is room. When there is none and another connection
waits, the oldest that has stayed unauthenticated for UNAUTHENTICATED_GRACE makes
room. What is left to an attacker on the peer's host is to open connections
faster than that (MAX_PENDING / UNAUTHENTICATED_GRACE: 32 a second, and each
its own handshake), which it could also do to the peer's own sockets.

A connection from any other address is closed before its handshake (logged once
per address): the peer dials from its replication address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable

from tandem.volume.link import Link
from tandem.volume.peer import Authenticated

log = logging.getLogger("tandem.volume")

MAX_PENDING = 8
"""Connections from the peer's address authenticating at once (each has a receiver
thread and a 4 MiB buffer)."""
UNAUTHENTICATED_GRACE = 0.25
"""Seconds a pending connection may stay unauthenticated while the pending set is
full and another connection waits: the real peer's handshake takes two round trips
(milliseconds; 1 s before session 36 let 4 silent connections a second keep the
peer out). Nothing is closed for it while there is room."""
BACKLOG = 16
STRANGERS_REMEMBERED = 256
"""Refused addresses logged once each; past this many, one line a minute says more come."""

Handler = Callable[..., None]


class PeerListener:
    """Accepts the peer's connections and hands over the first that authenticates.

    `make_link(sock, on_events, on_closed)` builds a Link (not started) for an
    accepted socket. `claim(link)` is asked, under this listener's lock, when a
    pending link has authenticated as `peer`: True means it took the slot, and from
    then on its events go to `on_events`; a link closed before, or refused, never
    reaches it. `on_closed` hears of every link's end (the replicator ignores links
    that are not its own); `on_failed(reason)` of a handshake that failed."""

    def __init__(self, address: str, port: int, peer_address: str, peer: str,
                 make_link: Callable[[socket.socket, Handler, Handler], Link],
                 claim: Callable[[Link], bool], on_events: Handler, on_closed: Handler,
                 on_failed: Callable[[str], None]):
        self._sock = socket.create_server((address, port), reuse_port=False, backlog=BACKLOG)
        self._sock.settimeout(0.2)
        self._peer_ip = ipaddress.ip_address(peer_address)
        self._peer_address = peer_address
        self._peer = peer
        self._make_link = make_link
        self._claim = claim
        self._on_events = on_events
        self._on_closed = on_closed
        self._on_failed = on_failed
        self._lock = threading.Lock()
        self._pending: list[Link] = []
        self._strangers: set[str] = set()  # addresses refused (logged once each)
        self._strangers_logged_at = -60.0
        self._evicted_logged_at = -60.0
        self._failed_logged_at = -60.0
        self._ours: weakref.WeakSet[Link] = weakref.WeakSet()  # closed by us: no warning
        self._closed = False

    @property
    def pending(self) -> list[Link]:
        with self._lock:
            return list(self._pending)

    # --- the connect loop's side ---------------------------------------------------
    def poll(self) -> None:
        """Take at most one waiting connection (waiting up to 0.2 s for one) and start
        its handshake; make room first if the pending set is full."""
        if self._closed:
            time.sleep(0.05)
            return
        if not self._make_room():
            time.sleep(0.05)
            return
        try:
            sock, addr = self._sock.accept()
        except TimeoutError:
            return
        except OSError:  # closed under us while stopping; out of descriptors
            time.sleep(0.05)
            return
        if ipaddress.ip_address(addr[0]) != self._peer_ip:
            sock.close()
            self._refused(addr[0])
            return
        sock.settimeout(None)
        link = self._make_link(sock, self._pending_events, self._pending_closed)
        with self._lock:
            closing = self._closed
            if not closing:
                self._pending.append(link)
        if closing:  # (not under the lock: the close handler takes it)
            self._close(link, "the listener is closing")
            return
        with contextlib.suppress(ConnectionError):  # closed: _pending_closed took it out
            link.start()

    def _refused(self, address: str) -> None:
        """Log a refused address once; a scan from many addresses must not grow the set
        (nor the log) without bound."""
        if address in self._strangers:
            return
        if len(self._strangers) < STRANGERS_REMEMBERED:
            self._strangers.add(address)
            log.warning("refused a replication connection from %s: the peer %s connects from"
                        " %s", address, self._peer, self._peer_address)
            return
        now = time.monotonic()
        if now - self._strangers_logged_at >= 60:
            self._strangers_logged_at = now
            log.warning("refused a replication connection from %s: the peer %s connects from"
                        " %s (more than %d other addresses refused; logged once a minute now)",
                        address, self._peer, self._peer_address, STRANGERS_REMEMBERED)

    def _make_room(self) -> bool:
        """True if a connection may be taken now. Full: the oldest pending link that
        has stayed unauthenticated for the grace is closed, if another connection
        waits; otherwise the waiting one stays in the backlog for now."""
        with self._lock:
            if len(self._pending) < MAX_PENDING:
                return True
            oldest = min(self._pending, key=lambda link: link.started_at)
        if time.monotonic() - oldest.started_at < UNAUTHENTICATED_GRACE:
            return False
        try:
            waits = select.poll()
            waits.register(self._sock, select.POLLIN)
            if not waits.poll(50):
                return False
        except (OSError, ValueError):  # closed under us while stopping
            return False
        self._ours.add(oldest)
        if not oldest.close_if_unauthenticated(
                f"not authenticated within {UNAUTHENTICATED_GRACE:g} s while"
                f" {MAX_PENDING} connections were pending and another waited"):
            self._ours.discard(oldest)
            return False  # it has just authenticated (or ended): the next poll sees
        now = time.monotonic()
        if now - self._evicted_logged_at >= 60:
            self._evicted_logged_at = now
            log.warning("%d replication connections from %s pending, none authenticated"
                        " within %g s: closing the oldest for the next",
                        MAX_PENDING, self._peer_address, UNAUTHENTICATED_GRACE)
        return True

    def tick(self, now: float) -> None:
        """Handshake timeouts of the pending links."""
        for link in self.pending:
            link.tick(now)

    def drop_pending(self, reason: str) -> None:
        """No link is wanted now (StandAlone, a failed disk, a link already up)."""
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, []
        for link in pending:
            self._close(link, reason)

    def _close(self, link: Link, reason: str) -> None:
        self._ours.add(link)
        link.close(reason)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
        self.drop_pending("the listener is closing")

    # --- the pending links' receiver threads ------------------------------------------
    def _pending_events(self, link: Link, events: list) -> None:
        auth = next((ev for ev in events if type(ev) is Authenticated), None)
        if auth is None:
            return  # the handshake's progress: nothing for the replicator yet
        if auth.peer_node != self._peer:
            # Before it is offered the slot: it must not close the real peer's.
            why = f"expected peer {self._peer}, got {auth.peer_node}"
            log.warning("replication connection from %s: %s", self._peer_address, why)
            self._on_failed(why)
            self._ours.add(link)
            link.disconnect(why)
            return
        with self._lock:
            won = (link in self._pending and not link.closed and not self._closed
                   and self._claim(link))
            if won:
                others = [p for p in self._pending if p is not link]
                self._pending = []
                # Its receiver is this thread: its next batch goes straight through.
                link.redirect_events(self._on_events)
            elif link in self._pending:
                self._pending.remove(link)
                others = []
        if not won:
            self._ours.add(link)
            link.disconnect("another connection from the peer took the link, or none is"
                            " wanted now")
            return
        for other in others:
            self._close(other, "another connection from the peer authenticated first")
        self._on_events(link, events)

    def _pending_closed(self, link: Link, reason: str) -> None:
        with self._lock:
            if link in self._pending:
                self._pending.remove(link)
            ours = link in self._ours
            self._ours.discard(link)
        if not ours and not link.authenticated:
            # A wrong secret, a handshake timeout, a Disconnect: what the status shows
            # for why the listening side has no link (a protocol error is logged
            # by the link itself).
            self._on_failed(f"connection from {self._peer_address} ended before"
                            f" authenticating: {reason}")
            now = time.monotonic()
            if now - self._failed_logged_at >= 10:
                self._failed_logged_at = now
                log.warning("replication connection from %s ended before authenticating: %s",
                            self._peer_address, reason)
        self._on_closed(link, reason)
