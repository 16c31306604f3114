"""A simulated TCP connection for the replication link (what the volume model's link rides on).

TCP's guarantees are kept, because the real link relies on them: bytes arrive in
order, without gaps or duplicates, in segments of arbitrary size (so the real
``FrameDecoder`` sees frames split anywhere). What can go wrong is what goes
wrong with TCP:

- a **partition** holds segments (retransmission): they arrive in order after the
  heal, unless an end gave up meanwhile (the real link times out on pings);
- a **reset** (an interface reset, a middlebox dropping state) ends the connection:
  both ends see end-of-stream, bytes in flight are gone;
- a **crashed host** answers nothing until it is back; then it answers with a
  reset, which the surviving end sees as end-of-stream;
- a closed end (FIN) delivers end-of-stream after the bytes sent before it.

There is no silent loss within a connection and no reordering across it.
"""

from __future__ import annotations

from collections.abc import Callable

from tandem.sim.kernel import Sim


class End:
    """One end of a connection, owned by one node."""

    __slots__ = ("conn", "node", "on_bytes", "closed", "broken", "other")

    def __init__(self, conn: Conn, node: str):
        self.conn, self.node = conn, node
        self.on_bytes: Callable[[bytes], None] | None = None
        self.closed = False  #: this end's owner closed it
        self.broken = False  #: reset / peer gone: sends fail
        self.other: End = None  # type: ignore[assignment]

    def send(self, data: bytes) -> None:
        if self.closed or self.broken:
            raise OSError("connection reset")
        if data:
            self.conn.transmit(self, data)

    def close(self) -> None:
        """close(): a FIN after whatever was sent before."""
        if self.closed:
            return
        self.closed = True
        if not self.broken:
            self.conn.transmit(self, b"")


class Conn:
    """A connection between two nodes over one `Wire` (the replication network)."""

    def __init__(self, wire: Wire, a: str, b: str):
        self.wire = wire
        self.a, self.b = End(self, a), End(self, b)
        self.a.other, self.b.other = self.b, self.a
        self._last: dict[int, float] = {id(self.a): 0.0, id(self.b): 0.0}
        self.held: list[tuple[End, bytes]] = []
        self.dead = False
        wire.conns.append(self)

    def transmit(self, src: End, data: bytes) -> None:
        if self.dead:
            return
        w = self.wire
        if w.partitioned:
            self.held.append((src, data))
            return
        rng = w.sim.rng
        pieces = [data]
        if len(data) > 24 and rng.random() < w.split_p:
            cut = rng.randint(1, len(data) - 1)
            pieces = [data[:cut], data[cut:]]
        for piece in pieces:
            t = max(self._last[id(src)], w.sim.now + w.base + rng.random() * w.jitter + w.extra)
            self._last[id(src)] = t
            w.sim.at(t, self._arrive, src.other, piece)

    def _arrive(self, dst: End, data: bytes) -> None:
        if self.dead or dst.broken:
            return
        w = self.wire
        if w.down.get(dst.node):
            return  # the host is down: nothing answers (a reset comes when it is back)
        if dst.closed:
            if data:
                self.reset("data to a closed socket")
            return
        if dst.on_bytes is not None:
            dst.on_bytes(data)

    def heal(self) -> None:
        held, self.held = self.held, []
        for src, data in held:
            self.transmit(src, data)

    def reset(self, why: str = "") -> None:
        """Both ends see end-of-stream (after the usual delay); in-flight bytes are gone."""
        if self.dead:
            return
        self.dead = True
        self.held.clear()
        w = self.wire
        for end in (self.a, self.b):
            end.broken = True
            if not end.closed and not w.down.get(end.node):
                w.sim.after(w.base, self._eof, end)

    def _eof(self, end: End) -> None:
        if not end.closed and end.on_bytes is not None and not self.wire.down.get(end.node):
            end.on_bytes(b"")


class Wire:
    """The replication network between the two nodes."""

    def __init__(self, sim: Sim, base: float = 0.0002, jitter: float = 0.0004, split_p: float = 0.2):
        self.sim, self.base, self.jitter, self.split_p = sim, base, jitter, split_p
        self.extra = 0.0
        self.partitioned = False
        self.down: dict[str, bool] = {}
        self.conns: list[Conn] = []

    def connect(self, a: str, b: str) -> Conn:
        self.conns = [c for c in self.conns if not c.dead]
        return Conn(self, a, b)

    def partition(self, on: bool) -> None:
        self.partitioned = on
        if not on:
            for c in list(self.conns):
                c.heal()

    def reset_all(self, why: str) -> None:
        for c in list(self.conns):
            c.reset(why)

    def host_down(self, node: str) -> None:
        self.down[node] = True
        for c in self.conns:
            for end in (c.a, c.b):
                if end.node == node:
                    end.broken = end.closed = True

    def host_up(self, node: str) -> None:
        """The host answers again: segments of its old connections now meet a reset."""
        self.down[node] = False
        for c in list(self.conns):
            if node in (c.a.node, c.b.node) and not c.dead:
                c.reset("peer host restarted")
