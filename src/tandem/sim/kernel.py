"""The simulated world's clock, event queue, processes and network.

No wall clock, no threads, no asyncio: one heap of (time, seq, callback)
events, one ``random.Random(seed)``. Agent logic is written as generator
coroutines that yield commands (:class:`Sleep`, :class:`Call`,
:class:`WaitWake`), so the code reads like the asyncio driver it mirrors
while every interleaving is chosen by the seed.

Times: ``Sim.now`` is true time (the DCS's clock). Each node has a
:class:`NodeClock` (rate skew and offset) for its local monotonic time;
agents and volumes only ever see their local clock.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

from tandem.dcs.base import DCSError


class Sim:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._seq = 0
        self.trace: list[str] = []
        self.events = 0

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._q, (max(t, self.now), self._seq, fn, args))

    def after(self, dt: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + dt, fn, *args)

    def run(self, until: float) -> None:
        q = self._q
        while q and q[0][0] <= until:
            t, _, fn, args = heapq.heappop(q)
            self.now = t
            self.events += 1
            fn(*args)
        self.now = until

    def log(self, who: str, what: str) -> None:
        self.trace.append(f"{self.now:9.4f} {who:<7} {what}")


class NodeClock:
    """A node's CLOCK_MONOTONIC: local = offset + rate * true."""

    __slots__ = ("sim", "rate", "offset")

    def __init__(self, sim: Sim, rate: float, offset: float):
        self.sim, self.rate, self.offset = sim, rate, offset

    def now(self) -> float:
        return self.offset + self.rate * self.sim.now

    def true_at(self, local: float) -> float:
        return (local - self.offset) / self.rate

    def true_dt(self, local_dt: float) -> float:
        return max(0.0, local_dt) / self.rate


# --- what a coroutine may yield ---------------------------------------------------------
class Sleep(NamedTuple):
    seconds: float  #: local seconds


class Call(NamedTuple):
    """One request to the DCS over the node's network, answered or timed out
    (DCSError) after `timeout` local seconds. The request may apply even when
    the caller sees a timeout."""
    op: str
    args: tuple
    timeout: float


class WaitWake(NamedTuple):
    timeout: float  #: local seconds


class Refused(NamedTuple):
    """A DCS answer that the client raises as DCSError (e.g. lease not found)."""
    reason: str


Coro = Generator[Any, Any, Any]


class Net:
    """Each node's path to the DCS: delay with jitter (so reordering), loss,
    and partitions per direction ('up' = node -> DCS, 'down' = DCS -> node)."""

    def __init__(self, sim: Sim, base: float, jitter: float):
        self.sim, self.base, self.jitter = sim, base, jitter
        self.blocked: set[tuple[str, str]] = set()
        self.loss: dict[str, float] = {}

    def send(self, node: str, way: str, fn: Callable[..., Any], *args: Any) -> None:
        if (node, way) in self.blocked:
            return
        rng = self.sim.rng
        p = self.loss.get(node, 0.0)
        if p and rng.random() < p:
            return
        self.sim.after(self.base + rng.expovariate(1.0 / self.jitter), fn, *args)


class Process:
    """A simulated OS process on one node: its coroutines die together (crash),
    stop together (SIGSTOP: events are held and delivered on resume, stale)."""

    def __init__(self, sim: Sim, net: Net, dcs: Any, node: str, clock: NodeClock, name: str):
        self.sim, self.net, self.dcs, self.node, self.clock, self.name = sim, net, dcs, node, clock, name
        self.alive = True
        self.paused = False
        self._held: list[tuple] = []
        self.wake = False
        self._waiter: tuple[Task, int] | None = None

    def spawn(self, gen: Coro) -> Task:
        task = Task(self, gen)
        self.sim.after(0.0, self.deliver, task, 0, None, None)
        return task

    def kill(self) -> None:
        self.alive = False
        self._held.clear()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        held, self._held = self._held, []
        for args in held:
            self.sim.after(0.0, self.deliver, *args)

    def set_wake(self) -> None:
        if not self.alive:
            return
        self.wake = True
        if self._waiter is not None:
            task, tok = self._waiter
            self._waiter = None
            self.sim.after(0.0, self.deliver, task, tok, None, None)

    def deliver(self, task: Task, tok: int, value: Any, exc: BaseException | None) -> None:
        if not self.alive:
            return
        if self.paused:
            self._held.append((task, tok, value, exc))
            return
        if task.token != tok:
            return  # an answer or timer for a wait that already ended
        task.step(value, exc)

    def _reply(self, task: Task, tok: int, result: Any) -> None:
        if isinstance(result, Refused):
            self.deliver(task, tok, None, DCSError(f"model DCS refused: {result.reason}"))
        else:
            self.deliver(task, tok, result, None)

    def _at_dcs(self, task: Task, tok: int, op: str, args: tuple) -> None:
        result = self.dcs.apply(op, args)
        self.net.send(self.node, "down", self._reply, task, tok, result)


class Task:
    __slots__ = ("proc", "gen", "token")

    def __init__(self, proc: Process, gen: Coro):
        self.proc, self.gen, self.token = proc, gen, 0

    def step(self, value: Any, exc: BaseException | None) -> None:
        proc = self.proc
        self.token += 1  # whatever else was pending for the last wait is stale now
        try:
            cmd = self.gen.throw(exc) if exc is not None else self.gen.send(value)
        except StopIteration:
            return
        self.token += 1
        tok = self.token
        sim, clock = proc.sim, proc.clock
        kind = type(cmd)
        if kind is Call:
            sim.after(clock.true_dt(cmd.timeout), proc.deliver, self, tok, None,
                      DCSError(f"model DCS: {cmd.op} timed out"))
            proc.net.send(proc.node, "up", proc._at_dcs, self, tok, cmd.op, cmd.args)
        elif kind is Sleep:
            sim.after(clock.true_dt(cmd.seconds), proc.deliver, self, tok, None, None)
        elif kind is WaitWake:
            if proc.wake:
                sim.after(0.0, proc.deliver, self, tok, None, None)
            else:
                proc._waiter = (self, tok)
                sim.after(clock.true_dt(cmd.timeout), proc.deliver, self, tok, None, None)
        else:  # pragma: no cover - a programming error in a coroutine
            raise TypeError(f"coroutine yielded {cmd!r}")
