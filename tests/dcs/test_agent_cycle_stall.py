"""A hung HA cycle must not keep the leader key alive: the agent's own lease loop,
against the real etcd of the lab, with the cycle made to hang (the fault injected
is into our own code: no etcd, lease or timing is simulated)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from tandem.cluster.agent import Agent
from tandem.config import load_config
from tandem.dcs import pki
from tandem.volume.spec import resolve
from tests.dcs.conftest import run, session

pytestmark = pytest.mark.lab

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.toml"
CYCLE_TIMEOUT = 10  # the config's least
TTL = 1


def _config(tmp_path: Path, cluster: str, extra: str = ""):
    """The example config for an in-process agent, with `extra` tables appended."""
    text = EXAMPLE.read_text().replace('name = "cloud"', f'name = "{cluster}"', 1)
    text = text.replace("[etcd]\n", f"[agent]\ncycle_timeout = {CYCLE_TIMEOUT}\n\n[etcd]\n", 1)
    text += extra
    text = text.replace("[database]\n", '[database]\npassword_file = "dbpass"\n', 1)
    (tmp_path / "dbpass").write_text("not-used-here\n")
    os.chmod(tmp_path / "dbpass", 0o600)
    (tmp_path / "cluster.toml").write_text(text)
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(secret, 0o600)
    pki.init(tmp_path / "pki", cluster, {"node1": ["10.100.1.11"], "node2": ["10.100.1.12"]})
    return load_config(tmp_path / "cluster.toml")


def test_a_hung_ha_cycle_stops_renewing_the_lease_and_a_long_one_that_progresses_does_not(
        etcd_ok, cluster_name, tmp_path, caplog):
    """node1's HA cycle never returns. node2's is as long, but starts a resource of its
    group every 2 s (as a promotion does, each step bounded by its own timeout). Both
    run the agent's real lease loop for cycle_timeout + 4.5 s: node1's lease must have
    run out in etcd (its key would be free for the peer), node2's must still be renewed."""
    cfg = _config(tmp_path, cluster_name)
    assert cfg.agent.cycle_timeout == CYCLE_TIMEOUT and cfg.etcd.lease_ttl == TTL

    def agent(node: str) -> Agent:
        d = tmp_path / node
        spec = resolve(cfg, "db", node, d / "data", d / "run")
        a = Agent(cfg, node, spec, d / "data", d / "run")
        a.dcs = session(etcd_ok, cluster_name, node, ttl=TTL)
        return a

    async def scenario():
        hung, busy = agent("node1"), agent("node2")

        async def hung_cycle():
            await asyncio.Event().wait()

        async def progressing_cycle():
            while True:
                busy.group.on_step("mariadb")
                await asyncio.sleep(2.0)

        hung.cycle, busy.cycle = hung_cycle, progressing_cycle
        tasks = [asyncio.create_task(coro) for a in (hung, busy)
                 for coro in (a._main_loop(), a._lease_loop())]
        try:
            await asyncio.sleep(1.0)
            leases = {a.node: a.dcs.lease_id for a in (hung, busy)}
            assert None not in leases.values(), leases
            await asyncio.sleep(CYCLE_TIMEOUT + 3.5)
            async with session(etcd_ok, cluster_name, "witness", ttl=10) as observer:
                return {node: await observer.lease_silence(lease) for node, lease in leases.items()}
        finally:
            for a in (hung, busy):
                a.stopping = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for a in (hung, busy):
                await a.dcs.close()

    caplog.set_level(logging.WARNING, logger="tandem")
    silence = run(scenario())
    assert silence["node1"] is None, f"the hung agent's lease is still alive: {silence}"
    assert silence["node2"] is not None, f"the progressing agent lost its lease: {silence}"
    stuck = [r.getMessage() for r in caplog.records if "HA cycle has been stuck" in r.getMessage()]
    assert len(stuck) == 1, stuck  # node1's, once
    # the config's 10 s is below MariaDB's 120 s start: the agent said so
    assert any("agent.cycle_timeout (10 s) is not 30 s above" in r.getMessage() for r in caplog.records)
