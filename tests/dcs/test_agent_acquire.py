"""The agent's race for the key after its lease lapsed, against the real etcd of the
lab: the key goes on a lease granted for it, and the promotion that follows must
know how long that lease lives before the lease loop's first keepalive."""

from __future__ import annotations

import time

import pytest

from tandem.cluster.agent import Agent
from tandem.cluster.view import Action, Decision
from tandem.volume.spec import resolve
from tests.dcs.conftest import run, session
from tests.dcs.test_agent_cycle_stall import TTL, _config

pytestmark = pytest.mark.lab


def test_a_key_taken_on_a_fresh_lease_has_the_grants_deadline_at_once(etcd_ok, cluster_name,
                                                                        tmp_path):
    """Without it the next cycle found the key held "without a lease it has renewed"
    and gave it up: three times in 0.2 s after a 15 s pause (torture 309)."""
    cfg = _config(tmp_path, cluster_name)
    spec = resolve(cfg, "db", "node1", tmp_path / "data", tmp_path / "run")
    agent = Agent(cfg, "node1", spec, tmp_path / "data", tmp_path / "run")
    agent.dcs = session(etcd_ok, cluster_name, "node1", ttl=TTL)
    at_promotion: list[tuple[float | None, int | None]] = []

    async def promote(why: str) -> None:  # (the group's start is not what this is about)
        at_promotion.append((agent.key_deadline(), agent.deadline_lease))

    agent._promote = promote  # type: ignore[method-assign]

    async def scenario():
        try:
            agent._take_renewal(await agent.dcs.renew_lease())
            old = agent.dcs.lease_id
            assert agent.key_deadline() is not None and agent.deadline_lease == old
            async with agent.dcs._new_client(f"{etcd_ok.lab.address('node2')}:2379", 2) as c:
                await c.revoke_lease(old)
            assert (await agent.dcs.renew_lease()).lost
            agent.lease_deadline = None  # as the lease loop does on a lost lease
            agent.view = await agent.dcs.load()
            before = time.monotonic()
            await agent._acquire(Decision(Action.ACQUIRE, "racing for the free leader key"))
            after = time.monotonic()
            assert agent.leader is not None, "the key was free: the race must be won"
            return agent.leader.lease, old, before, after
        finally:
            await agent.dcs.close()

    lease, old, before, after = run(scenario())
    assert lease not in (None, old)
    assert len(at_promotion) == 1
    deadline, deadline_lease = at_promotion[0]
    assert deadline_lease == lease
    assert deadline is not None, "the promotion saw no deadline for the key's lease"
    assert before + TTL <= deadline + 0.01 and deadline <= after + TTL
