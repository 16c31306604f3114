"""A hung tick of the management tier's clones must not keep the API VIP on its node
for good: the agent's supervisor starts the task again, and while the tick hangs
the API VIP's lifetime is not extended. The hang is injected into our own code
(the tick), as in test_agent_cycle_stall; nothing else is simulated."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from tandem.cluster.agent import Agent
from tandem.volume.spec import resolve
from tests.dcs.test_agent_cycle_stall import _config

STALL_AFTER = 0.6  # the product's is 20 s above its longest step; short here to test
CHECK_EVERY = 0.05


def _agent(tmp_path: Path) -> Agent:
    cfg = _config(tmp_path, "cloud", '\n[mgmt]\nport = 8080\nserver_port = 8081\n'
                  'api_vip = { address = "10.100.1.101/24" }\n')
    d = tmp_path / "node1"
    return Agent(cfg, "node1", resolve(cfg, "db", "node1", d / "data", d / "run"), d / "data", d / "run")


class Ticks:
    """The clones' tick, replaced: the first `hung` ticks never end by themselves; on
    a cancel they end (`on_cancel="raise"`), go on waiting until released ("deaf"), or
    swallow it and return as if done ("swallow")."""

    def __init__(self, hung: int, on_cancel: str = "raise"):
        self.hung, self.on_cancel = hung, on_cancel
        self.started = self.running = self.most_at_once = 0
        self.tasks: list[int] = []  #: the task each tick ran in, by id
        self.release = asyncio.Event()

    async def __call__(self, agent: Agent) -> None:
        self.started += 1
        me = id(asyncio.current_task())
        if me not in self.tasks:
            self.tasks.append(me)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.started <= self.hung:
                while True:
                    try:
                        await self.release.wait()
                        return
                    except asyncio.CancelledError:
                        if self.on_cancel == "raise":
                            raise
                        if self.on_cancel == "swallow":
                            return
        finally:
            self.running -= 1


def _supervise(agent: Agent, tick, seconds: float, meanwhile=None,
               release: bool = True) -> tuple[float, bool]:
    """Run the agent's clones supervisor for `seconds` with `tick` as the clones' tick
    and the coroutine function `meanwhile` beside it, then stop the agent (releasing a
    hung tick first if `release`); how long the supervisor took to end, and whether
    a tick's stall was still on record then."""
    clones = agent.clones
    assert clones is not None
    clones.tick = tick
    clones.stall_after = STALL_AFTER

    async def scenario() -> tuple[float, bool]:
        task = asyncio.create_task(clones.supervise(agent, check_every=CHECK_EVERY))
        try:
            await asyncio.gather(asyncio.sleep(seconds), *([meanwhile()] if meanwhile else []))
        finally:
            agent.stopping = True
            if release and isinstance(tick, Ticks):
                tick.release.set()
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(task, 10)
            finally:
                took = time.monotonic() - t0
                stalled = clones.stalled(time.monotonic())
                if isinstance(tick, Ticks):  # asyncio.run waits for every task left
                    tick.on_cancel = "raise"
                    tick.release.set()
        return took, stalled

    return asyncio.run(scenario())


def test_a_hung_clones_tick_is_restarted_and_its_api_vip_not_extended_meanwhile(tmp_path, caplog):
    agent = _agent(tmp_path)
    clones = agent.clones
    assert clones is not None and clones.vip is not None
    # the product's bound: its longest step (a member's 30 s start or stop) and 20 s
    assert clones.stall_after == 50.0
    refused: list[bool] = []

    async def renewal_while_hung() -> None:
        """A lease renewal's refresh while the first tick hangs past the bound (dated
        back at once, in the same step as the refresh: the supervisor cannot see it
        between the two and restart the task first)."""
        await asyncio.sleep(0.2)
        clones.holding = True
        clones.vip._up = True  # as after its start: the refresh would extend it
        clones.busy_since = time.monotonic() - STALL_AFTER - 0.1
        refused.append(clones.stalled(time.monotonic()))
        await clones.refresh_vip()
        refused.append(not clones.vip.extending)
        clones.busy_since = time.monotonic()  # the tick steps again: still nothing to extend
        await clones.refresh_vip()
        refused.append(not clones.vip.extending)

    ticks = Ticks(hung=1)
    caplog.set_level(logging.WARNING, logger="tandem")
    _supervise(agent, ticks, 1.5, renewal_while_hung)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("has made no step" in m for m in msgs) == 1, msgs
    assert len(ticks.tasks) >= 2, "the clones' task was not started again"
    assert ticks.started >= 3 and ticks.most_at_once == 1
    assert refused == [True, True, True]
    assert sum("API VIP's lifetime is no longer extended" in m for m in msgs) == 1, msgs
    assert not clones.holding  # the restarted task starts the VIP afresh, or finds it gone


def test_a_clones_task_deaf_to_its_cancel_is_never_run_twice_at_once(tmp_path, caplog):
    """Two ticks side by side would race on the API VIP: the supervisor waits for the
    hung task to end, cancelling it again meanwhile, before it starts the next."""
    agent = _agent(tmp_path)
    ticks = Ticks(hung=1, on_cancel="deaf")
    caplog.set_level(logging.WARNING, logger="tandem")

    async def release_later() -> None:
        await asyncio.sleep(STALL_AFTER + 1.5)
        assert ticks.started == 1  # the deaf tick still runs: no second one beside it
        ticks.release.set()

    _supervise(agent, ticks, STALL_AFTER + 2.5, release_later)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("has made no step" in m for m in msgs) == 1, msgs
    assert any("cancelling it again" in m for m in msgs), msgs
    assert ticks.most_at_once == 1
    assert len(ticks.tasks) == 2 and ticks.started >= 3, (ticks.tasks, ticks.started)


def test_a_tick_that_swallows_its_cancel_still_ends_its_task(tmp_path, caplog):
    """A tick returning as if done from the cancel meant for its task: the task must
    end all the same, not tick on under a supervisor that waits for it to end."""
    agent = _agent(tmp_path)
    ticks = Ticks(hung=1, on_cancel="swallow")
    caplog.set_level(logging.WARNING, logger="tandem")
    _supervise(agent, ticks, STALL_AFTER + 1.5)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("has made no step" in m for m in msgs) == 1, msgs
    assert not any("has not ended" in m for m in msgs), msgs
    assert len(ticks.tasks) == 2, "the task that swallowed its cancel was not replaced"


def test_an_agent_stopping_beside_a_hung_deaf_tick_does_not_wait_for_ever(tmp_path, caplog):
    """The supervisor gives the hung task 5 s after its cancel; its tick's stall stays
    on record, so the API VIP is not extended while it lives on."""
    agent = _agent(tmp_path)
    clones = agent.clones
    assert clones is not None
    ticks = Ticks(hung=1, on_cancel="deaf")
    caplog.set_level(logging.WARNING, logger="tandem")
    took, stalled = _supervise(agent, ticks, STALL_AFTER + 0.5, release=False)
    assert 4.5 < took < 8, took
    assert stalled
    assert any("has not ended 5 s after its cancel" in r.getMessage() for r in caplog.records)


def test_the_agents_cancel_does_not_cut_the_hung_tasks_grace_short(tmp_path, caplog):
    """Agent.run cancels the supervisor at its stop, possibly while it gives the hung
    task its 5 s: the grace runs out all the same."""
    agent = _agent(tmp_path)
    clones = agent.clones
    assert clones is not None
    ticks = Ticks(hung=1, on_cancel="deaf")
    clones.tick, clones.stall_after = ticks, STALL_AFTER

    async def scenario() -> float:
        sup = asyncio.create_task(clones.supervise(agent, check_every=CHECK_EVERY))
        try:
            await asyncio.sleep(STALL_AFTER + 0.5)
            agent.stopping = True
            await asyncio.sleep(1.0)  # the supervisor is in its 5 s for the deaf task
            t0 = time.monotonic()
            sup.cancel()
            await asyncio.sleep(1.0)
            sup.cancel()  # and again (asyncio.run's own teardown does)
            await asyncio.wait({sup}, timeout=10)
            return time.monotonic() - t0
        finally:
            ticks.on_cancel = "raise"
            ticks.release.set()

    took = asyncio.run(scenario())
    assert 3.0 < took < 8, took


def test_a_tick_that_steps_is_not_taken_for_a_hung_one(tmp_path, caplog):
    """A tick longer than the bound whose steps (each bounded) keep coming."""
    agent = _agent(tmp_path)
    clones = agent.clones
    assert clones is not None
    ended = 0

    async def slow_tick(a: Agent) -> None:
        nonlocal ended
        for _ in range(6):
            clones._step()
            await asyncio.sleep(STALL_AFTER / 3)
        ended += 1

    caplog.set_level(logging.WARNING, logger="tandem")
    _supervise(agent, slow_tick, 3 * STALL_AFTER)
    assert not any("has made no step" in r.getMessage() for r in caplog.records)
    # 1.2 s each, twice the bound: the one under way at the stop ends too, none cut short
    assert ended == 2


def test_once_the_agent_stops_no_tick_claims_the_key_or_starts_the_api_vip(tmp_path):
    """The shutdown releases the API VIP's key and removes its address; a tick still
    under way (one deaf to its cancel) must not put either back: the claim says not
    ours, and the VIP's lease, which its start asks under its lock, refuses."""
    agent = _agent(tmp_path)
    clones = agent.clones
    assert clones is not None and clones.vip is not None
    agent.lease_deadline, agent.deadline_lease, agent.renewed_at = time.monotonic() + 5, 7, time.monotonic()
    assert clones.vip.lease() == (7, agent.renewed_at + 0.5)  # a start may rest on it
    clones.closing = True
    assert clones.vip.lease() == "the agent is stopping"
    assert asyncio.run(clones._claim(agent)) is False  # before any DCS call
