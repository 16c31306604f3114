"""Fence records and lease silence against the real three-member etcd in the lab."""

from __future__ import annotations

import asyncio
import time

import pytest

from tandem.dcs.base import Member, NodeRole
from tandem.dcs.view import Fence
from tests.cluster_lab.lab_prefix import lab_prefix
from tests.dcs.conftest import run, session

pytestmark = pytest.mark.lab
_prefix = lab_prefix("hf")


def test_fence_record_applies_to_exactly_one_leadership(etcd_ok, cluster_name):
    async def scenario():
        async with session(etcd_ok, cluster_name, "node1", ttl=10) as a, \
                   session(etcd_ok, cluster_name, "node2", ttl=10) as b:
            old = await a.attempt_to_acquire_leader(await a.load())
            await a.touch_member(Member("node1", NodeRole.PRIMARY))
            view = await b.load()
            assert view.fenced_token() is None
            fence = Fence("node1", old.revision, by="node2", agent="lab", reason="crashed", at=time.time())
            assert await b.record_fence(fence, old)
            view = await b.load()
            assert view.fence == fence and view.fenced_token() == old.revision
            # The fenced takeover replaces that key and ends the fenced node's lease
            # (its member key goes with it, not at the TTL).
            new = await b.take_over_leader(old, view)
            assert new is not None and new.node == "node2"
            after = await b.load()
            assert after.member("node1") is None
            assert after.fence == fence and after.fenced_token() is None, "an old fence never applies anew"
            # A record for a leadership that is over is refused.
            assert not await b.record_fence(fence, old)
            with pytest.raises(ValueError):
                await b.record_fence(fence, new)
    run(scenario())


def test_lease_silence_grows_only_when_keepalives_stop(etcd_ok, cluster_name):
    async def scenario() -> tuple[list[float], list[float], float | None]:
        async with session(etcd_ok, cluster_name, "node1", ttl=6) as a, \
                   session(etcd_ok, cluster_name, "node2", ttl=6) as b:
            lead = await a.attempt_to_acquire_leader(await a.load())
            renewed = []
            for _ in range(6):
                await a.renew_lease()
                renewed.append(await b.lease_silence(lead.lease))
                await asyncio.sleep(0.5)
            silent = []
            for _ in range(6):
                await asyncio.sleep(0.5)
                silent.append(await b.lease_silence(lead.lease))
            await a._call("revoke", lambda c: c.revoke_lease(lead.lease))
            return renewed, silent, await b.lease_silence(lead.lease)
    renewed, silent, gone = run(scenario())
    assert max(renewed) <= 1, renewed
    assert silent == sorted(silent) and silent[-1] >= 2, silent
    assert gone is None
