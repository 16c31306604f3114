"""An ordered group of resources (Pacemaker's group: ordered and colocated).

- start: members in order; on a failure, the members this start brought up
  are stopped again (reverse), and the result says failover is needed: a
  start that fails here will likely fail again here (Pacemaker's
  start-failure-is-fatal).
- stop: members in reverse order, *all of them*: a failed stop is recorded
  and the stop carries on, because leaving the VIP up because MariaDB would
  not stop is worse than either. The result names every failed stop; a node
  with a failed stop must be fenced before another node takes over.
- check: monitor every member; for the first unhealthy one (in order),
  count a failure, and below its threshold restart it together with the
  members after it (they depend on it), or, at `max_failures` failures within
  `failure_window` seconds, give up here and report "failover needed".

Every operation returns a :class:`GroupResult` whose `sentence` is the line
for the agent's status, and appends one line per member operation to
`history` (monotonic time, sentence). One lock serialises operations, so a
check never interleaves with a stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tandem.cluster.resources.base import Health, HealthState, OpResult, Resource

log = logging.getLogger("tandem.resources")


@dataclass(frozen=True, slots=True)
class GroupResult:
    ok: bool
    sentence: str
    failover_needed: bool = False
    #: False for a check that found a resource the group has given up on already: the
    #: same failure again, not one more to count against the node
    new_failure: bool = True
    stop_failed: tuple[str, ...] = ()  #: members that may still be running
    ops: tuple[OpResult, ...] = ()
    health: dict[str, Health] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.sentence


class FailureCounter:
    """Failures per resource within a sliding window (on the caller's clock), and
    when the group gave up on a resource (see ResourceGroup._recover)."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {}
        self._gave_up: dict[str, float] = {}

    def give_up(self, name: str, now: float) -> None:
        self._gave_up[name] = now

    def gave_up_at(self, name: str) -> float | None:
        return self._gave_up.get(name)

    def recovered(self, name: str) -> None:
        """`name` runs again (monitored healthy, or the group started anew): a failure
        from now on is a new one, counted, restarted or given up on as usual."""
        self._gave_up.pop(name, None)

    def record(self, name: str, now: float, window: float) -> int:
        q = self._times.setdefault(name, deque())
        q.append(now)
        return self.count(name, now, window)

    def count(self, name: str, now: float, window: float) -> int:
        q = self._times.get(name, deque())
        while q and q[0] <= now - window:
            q.popleft()
        return len(q)

    def reset(self, name: str | None = None) -> None:
        if name is None:
            self._times.clear()
            self._gave_up.clear()
        else:
            self._times.pop(name, None)
            self._gave_up.pop(name, None)


class ResourceGroup:
    def __init__(self, name: str, members: Sequence[Resource], *,
                 clock: Callable[[], float] = time.monotonic, history_size: int = 200):
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"group {name}: duplicate member names in {names}")
        self.name = name
        self.members = list(members)
        self.clock = clock
        self.failures = FailureCounter()
        self.history: deque[tuple[float, str]] = deque(maxlen=history_size)
        self.started = False  #: desired state: the group should be running
        self._lock = asyncio.Lock()
        #: told the name of each member before its start or stop (its own timeout bounds
        #: it): the agent's hung-cycle guard counts a long start or stop as progress
        self.on_step: Callable[[str], None] | None = None

    def _note(self, text: str) -> None:
        self.history.append((self.clock(), text))

    def _done(self, r: OpResult) -> None:
        """One line per operation as it ends, not only the group's sentence at the
        end: a start that hangs is then found by its last line (torture 40:38)."""
        self._note(str(r))
        (log.info if r.ok else log.warning)("%s", r)

    def _step(self, m: Resource) -> None:
        if self.on_step is not None:
            self.on_step(m.name)

    def member(self, name: str) -> Resource:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    # --- start / stop ------------------------------------------------------------------
    async def start(self) -> GroupResult:
        async with self._lock:
            self.started = True
            for m in self.members:  # started anew (a promotion): no give-up carries over
                self.failures.recovered(m.name)
            ops, failed = await self._start_from(0)
            if failed is None:
                res = GroupResult(True, f"started {', '.join(m.name for m in self.members)} in order",
                                  ops=tuple(ops))
            else:
                self.failures.record(failed.resource, self.clock(), self.member(failed.resource)
                                     .config.failure_window)
                res = await self._rollback(ops, failed)
            self._note(res.sentence)
            return res

    async def _start_from(self, index: int) -> tuple[list[OpResult], OpResult | None]:
        ops = []
        for m in self.members[index:]:
            self._step(m)
            r = await m.start()
            ops.append(r)
            self._done(r)
            if not r.ok:
                return ops, r
        return ops, None

    async def _rollback(self, ops: list[OpResult], failed: OpResult) -> GroupResult:
        """Stop what this start touched (the failed member too: it may be half
        started, like a loop device attached but not mounted)."""
        touched = [self.member(r.resource) for r in ops]
        stops = await self._stop_members(list(reversed(touched)))
        bad = tuple(r.resource for r in stops if not r.ok)
        self.started = False
        tail = "; stop FAILED for " + ", ".join(bad) if bad else ""
        undone = ", ".join(r.resource for r in stops if r.ok) or "nothing"
        return GroupResult(False, f"start failed at {failed.resource} ({failed.sentence}); stopped"
                                  f" {undone} again{tail}; failover needed", failover_needed=True,
                           stop_failed=bad, ops=tuple(ops + stops))

    async def _stop_members(self, members: Sequence[Resource]) -> list[OpResult]:
        ops = []
        for m in members:
            self._step(m)
            r = await m.stop()  # never raises: a failed stop is a result, and we carry on
            ops.append(r)
            self._done(r)
        return ops

    async def stop(self) -> GroupResult:
        async with self._lock:
            self.started = False
            ops = await self._stop_members(list(reversed(self.members)))
            bad = tuple(r.resource for r in ops if not r.ok)
            if bad:
                why = "; ".join(f"{r.resource}: {r.sentence}" for r in ops if not r.ok)
                res = GroupResult(False, f"stopped {len(ops) - len(bad)} of {len(ops)} resources;"
                                         f" stop FAILED for {why}", stop_failed=bad, ops=tuple(ops))
            else:
                res = GroupResult(True, f"stopped {', '.join(r.resource for r in ops)} in reverse order",
                                  ops=tuple(ops))
            self._note(res.sentence)
            return res

    # --- monitoring and recovery --------------------------------------------------------------
    async def monitor(self) -> dict[str, Health]:
        """Monitor all members at once (monitors are independent and each is
        bounded by its own timeout, so a tick costs the slowest, not the sum)."""
        healths = await asyncio.gather(*(m.monitor() for m in self.members))
        return {m.name: h for m, h in zip(self.members, healths, strict=True)}

    async def check(self) -> GroupResult:
        """One monitoring tick of a started group: monitor, then recover the
        first unhealthy member or give up on this node."""
        async with self._lock:
            health = await self.monitor()
            if not self.started:
                running = [n for n, h in health.items() if h.state is not HealthState.STOPPED]
                return GroupResult(True, "group is stopped" + (f"; still running: {', '.join(running)}"
                                                               if running else ""), health=health)
            for m in self.members:
                if health[m.name].is_ok:  # given up on and running again: that give-up is over
                    self.failures.recovered(m.name)  # (review 35: a new failure was not counted)
            bad = next((m for m in self.members if not health[m.name].is_ok), None)
            if bad is None:
                return GroupResult(True, f"all {len(self.members)} resources healthy", health=health)
            res = await self._recover(bad, health)
            self._note(res.sentence)
            return res

    async def _recover(self, bad: Resource, health: dict[str, Health]) -> GroupResult:
        cfg = bad.config
        why = health[bad.name].reason
        now = self.clock()
        # Given up already: the checks that follow (a leader with no peer to hand over
        # to goes on monitoring) see the same failure, not new ones. Each counted one
        # more, the window never emptied and the resource was never restarted again
        # (review 35). Now its failures are forgotten failure_window after the group
        # gave up, and it is restarted (Pacemaker's failure-timeout).
        gave_up = self.failures.gave_up_at(bad.name)
        if gave_up is not None and now - gave_up < cfg.failure_window:
            n = self.failures.count(bad.name, now, cfg.failure_window)
            return GroupResult(False, f"{bad.name} failed {n} times within {cfg.failure_window:g} s"
                                      f" (last: {why}): given up on this node, failover needed;"
                                      f" restarted here in {cfg.failure_window - (now - gave_up):.0f} s"
                                      " if no other node takes over", failover_needed=True,
                               new_failure=False, health=health)
        retry = gave_up is not None
        if retry:  # one restart, whatever max_failures (1 would give up again at once)
            self.failures.reset(bad.name)
        n = self.failures.record(bad.name, now, cfg.failure_window)
        if n >= cfg.max_failures and not retry:
            self.failures.give_up(bad.name, now)
            return GroupResult(False, f"{bad.name} failed {n} times within {cfg.failure_window:g} s"
                                      f" (last: {why}): giving up on this node, failover needed",
                               failover_needed=True, health=health)
        index = self.members.index(bad)
        dependents = self.members[index + 1:]
        stops = await self._stop_members(list(reversed(self.members[index:])))
        if any(not r.ok for r in stops):
            bad_stops = tuple(r.resource for r in stops if not r.ok)
            return GroupResult(False, f"{bad.name} failed ({why}); restart impossible, stop FAILED for"
                                      f" {', '.join(bad_stops)}: failover needed", failover_needed=True,
                               stop_failed=bad_stops, ops=tuple(stops), health=health)
        starts, failed = await self._start_from(index)
        deps = f" and {len(dependents)} dependent{'s' if len(dependents) != 1 else ''}" if dependents else ""
        if failed is not None:
            self.failures.record(failed.resource, self.clock(), self.member(failed.resource)
                                     .config.failure_window)
            return GroupResult(False, f"restart of {bad.name}{deps} failed at {failed.resource}"
                                      f" ({failed.sentence}): failover needed", failover_needed=True,
                               ops=tuple(stops + starts), health=health)
        return GroupResult(True, f"restarted {bad.name}{deps} after failure {n}/{cfg.max_failures}"
                                 f" within {cfg.failure_window:g} s ({why})",
                           ops=tuple(stops + starts), health=health)
