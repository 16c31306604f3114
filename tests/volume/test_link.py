"""The link driver over real loopback TCP: large frames that straddle receives
arrive intact and decode in place."""

from __future__ import annotations

import os
import socket
import threading

from tandem.volume import wire
from tandem.volume.genid import GenerationIds
from tandem.volume.link import Link
from tandem.volume.peer import Authenticated, PeerConfig, StateChanged, SyncDecided
from tandem.volume.states import ConnectionState, DiskState, Role

SECRET = b"s" * 32


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        a = socket.create_connection(srv.getsockname(), timeout=5)
        b, _ = srv.accept()
    finally:
        srv.close()
    b.settimeout(5)
    return a, b


def _state(role: Role) -> wire.StateExchange:
    return wire.StateExchange(role, DiskState.UP_TO_DATE, GenerationIds(10), 1 << 30, 0)


def test_large_writes_straddling_receives_arrive_intact() -> None:
    """1 MiB Writes never line up with the 4 MiB receive buffer: the incomplete
    frame at its end is carried to the front and decoded in place next time."""
    a_sock, b_sock = _tcp_pair()
    a_sock.settimeout(None)
    b_sock.settimeout(None)
    got: list[tuple[int, bytes]] = []
    connected = {"a": threading.Event(), "b": threading.Event()}
    all_in = threading.Event()
    n_writes = 12

    def handler(name: str, role: Role):
        def on_events(link: Link, events: list) -> None:
            for ev in events:
                if isinstance(ev, Authenticated):
                    link.send(_state(role))
                elif isinstance(ev, StateChanged) and ev.new is ConnectionState.CONNECTED:
                    connected[name].set()
                elif isinstance(ev, wire.Write):
                    got.append((ev.offset, bytes(ev.data)))  # a view: copy it now
                    link.send(wire.WriteAck(ev.seq))
                    if len(got) == n_writes:
                        all_in.set()
        return on_events

    cfg = {"secret": SECRET, "ping_interval": 5.0, "ping_timeout": 10.0}
    a = Link(a_sock, PeerConfig(node="n1", nonce=os.urandom(16), initiator=True, **cfg),
             handler("a", Role.PRIMARY), lambda *_: None)
    b = Link(b_sock, PeerConfig(node="n2", nonce=os.urandom(16), initiator=False, **cfg),
             handler("b", Role.SECONDARY), lambda *_: None)
    try:
        a.start()
        b.start()
        assert connected["a"].wait(5) and connected["b"].wait(5)
        blocks = [os.urandom(wire.MAX_DATA - 3 * i) for i in range(n_writes)]
        for i, data in enumerate(blocks):
            a.send_write(i * wire.MAX_DATA, data, lambda seq: None)
        assert all_in.wait(10)
        assert got == [(i * wire.MAX_DATA, d) for i, d in enumerate(blocks)]
        assert not a.closed and not b.closed
    finally:
        a.close("test over")
        b.close("test over")


def test_a_state_change_caused_by_our_own_send_is_delivered_at_once() -> None:
    """Whoever sends the last BitmapChunk second becomes SyncSource/SyncTarget by
    that send; the event must reach the driver now, not with the peer's next
    frame (a ping, seconds away here), or the resync starts that much later."""
    a_sock, b_sock = _tcp_pair()
    a_sock.settimeout(None)
    b_sock.settimeout(None)
    reached = {"a": threading.Event(), "b": threading.Event()}
    gens = {"a": GenerationIds(11, 10), "b": GenerationIds(10)}
    roles = {"a": Role.PRIMARY, "b": Role.SECONDARY}

    def handler(name: str):
        def on_events(link: Link, events: list) -> None:
            for ev in events:
                if isinstance(ev, Authenticated):
                    link.send(wire.StateExchange(roles[name], DiskState.UP_TO_DATE, gens[name],
                                                 1 << 30, 0))
                elif isinstance(ev, SyncDecided):
                    link.send(wire.BitmapChunk(0, b"", last=True))
                elif isinstance(ev, StateChanged) and ev.new in (ConnectionState.SYNC_SOURCE,
                                                                 ConnectionState.SYNC_TARGET):
                    reached[name].set()
        return on_events

    cfg = {"secret": SECRET, "ping_interval": 30.0, "ping_timeout": 60.0}
    a = Link(a_sock, PeerConfig(node="n1", nonce=os.urandom(16), initiator=True, **cfg),
             handler("a"), lambda *_: None)
    b = Link(b_sock, PeerConfig(node="n2", nonce=os.urandom(16), initiator=False, **cfg),
             handler("b"), lambda *_: None)
    try:
        a.start()
        b.start()
        assert reached["a"].wait(3) and reached["b"].wait(3)
        assert a.state is ConnectionState.SYNC_SOURCE and b.state is ConnectionState.SYNC_TARGET
    finally:
        a.close("test over")
        b.close("test over")


def test_a_send_after_close_fails_before_registering() -> None:
    """close() runs the close handler, which collects what was registered. A receive
    error closes the link with its state machine still Connected: a write that went on
    to register there was neither collected (its block missed the next resync) nor
    ever completed. The send must fail before its register callback runs.

    a's receiver is held inside its event handler (on reaching Connected) while the
    test closes and sends, so it cannot read the EOF and end the machine meanwhile."""
    a_sock, b_sock = _tcp_pair()
    a_sock.settimeout(None)
    b_sock.settimeout(None)
    a_held = threading.Event()
    release = threading.Event()

    def handler(role: Role, hold: bool):
        def on_events(link: Link, events: list) -> None:
            for ev in events:
                if isinstance(ev, Authenticated):
                    link.send(_state(role))
                elif (hold and isinstance(ev, StateChanged)
                      and ev.new is ConnectionState.CONNECTED):
                    a_held.set()
                    release.wait(10)
        return on_events

    cfg = {"secret": SECRET, "ping_interval": 30.0, "ping_timeout": 60.0}
    a = Link(a_sock, PeerConfig(node="n1", nonce=os.urandom(16), initiator=True, **cfg),
             handler(Role.PRIMARY, True), lambda *_: None)
    b = Link(b_sock, PeerConfig(node="n2", nonce=os.urandom(16), initiator=False, **cfg),
             handler(Role.SECONDARY, False), lambda *_: None)
    registered: list[int] = []
    try:
        a.start()
        b.start()
        assert a_held.wait(3)
        assert a.state is ConnectionState.CONNECTED
        a.close("receive failed: connection reset (as the receiver would)")
        assert a.state is ConnectionState.CONNECTED  # the machine itself did not end
        for send in (lambda: a.send_write(0, b"w" * 4096, registered.append, True),
                     lambda: a.send_flush(registered.append),
                     lambda: a.send(wire.Disconnect("x"), lambda: registered.append(0))):
            try:
                send()
                raise AssertionError("a send on a closed link went through")
            except ConnectionError as e:
                assert "link closed" in str(e)
        assert registered == []
    finally:
        release.set()
        a.close("test over")
        b.close("test over")
        a.join(5)
        b.join(5)
