"""Fence records and lease silence against the real three-member etcd in the lab."""

from __future__ import annotations

import asyncio
import time

import pytest

from tandem.cluster.fence_peer import DcsFencer
from tandem.dcs.base import DCSError, DiskState, Member, NodeRole
from tandem.dcs.base import monotonic as mono
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


def test_the_volume_daemons_fencer_passes_over_a_paused_member_and_remembers_it(etcd_ok, cluster_name):
    """fence_peer = "dcs": node1 (leader) lost its peer while its own etcd member is
    paused. A `tandem fence-peer` process asked that member alone, on every attempt
    (a fresh process starts there), and failed each time; the fencer moves on within
    the call and asks the member that answered first on the next one."""
    lab = etcd_ok.lab

    async def lead():
        async with session(etcd_ok, cluster_name, "node1", ttl=30) as a:
            return await a.attempt_to_acquire_leader(await a.load())
    assert run(lead()) is not None
    op_timeout = 2.0
    eps = {h: etcd_ok.endpoint(h) for h in ("node1", "node2", "witness")}
    fencer = DcsFencer(cluster_name, "node1", "node2", "db", list(eps.values()), op_timeout,
                       etcd_ok.members["node1"].tls)
    not_leader = DcsFencer(cluster_name, "node2", "node1", "db", [eps["node2"], eps["witness"]], op_timeout,
                           etcd_ok.members["node2"].tls)
    try:
        assert not not_leader(), "node2 does not hold the leader key: it must be refused"
        lab.faults.pause("node1", etcd_ok.proc)
        try:
            async def node1_alone():
                async with session(etcd_ok, cluster_name, "node1", op_timeout=1.0) as a:
                    with pytest.raises(DCSError):
                        await a.load()
            run(node1_alone())  # the premise: node1's own member does not answer
            assert fencer(), "node2 and the witness answer: the record must be made"
            assert fencer.endpoint != eps["node1"], "the next fence would ask the paused member first"
            t = mono()
            assert fencer()
            second = mono() - t
        finally:
            lab.faults.resume("node1", etcd_ok.proc)
        assert second < op_timeout, f"{second:.2f} s: the second call waited on the paused member"

        async def disks():
            async with session(etcd_ok, cluster_name, "node2") as b:
                vol = (await b.load()).volume("db")
                return vol and (vol.disk("node1"), vol.disk("node2"))
        assert run(disks()) == (None, DiskState.OUTDATED)
    finally:
        fencer.close()
        not_leader.close()


def test_the_volume_daemons_unfence_records_the_peer_up_to_date_again_only_when_safe(etcd_ok, cluster_name):
    """After a resync (or a fence that landed once the peer was back), the Primary's
    volume records its peer UpToDate again: a stale Outdated left behind was adopted
    by the peer as its own fence, and no disk could be promoted (torture 184:34). Only
    while the replicator (asked after the record is read) says the peer has every
    write; a fence that comes after it wins, also one that lands between its read and
    its write. Not only as the leader key's holder: with the key expired under a
    paused agent, the Primary was the only one that knew (simulation seed 185)."""
    import threading

    async def lead():
        async with session(etcd_ok, cluster_name, "node1", ttl=30) as a:
            return await a.attempt_to_acquire_leader(await a.load())
    assert run(lead()) is not None
    eps = [etcd_ok.endpoint(h) for h in ("node1", "node2", "witness")]
    fencer = DcsFencer(cluster_name, "node1", "node2", "db", eps, 2.0, etcd_ok.members["node1"].tls)
    other = DcsFencer(cluster_name, "node2", "node1", "db", eps, 2.0, etcd_ok.members["node2"].tls)
    racing = DcsFencer(cluster_name, "node1", "node2", "db", eps, 2.0, etcd_ok.members["node1"].tls)

    async def disk(node: str):
        async with session(etcd_ok, cluster_name, "witness") as w:
            vol = (await w.load()).volume("db")
            return vol and vol.disk(node)

    async def release():
        async with session(etcd_ok, cluster_name, "witness") as w:
            view = await w.load()
            assert view.leader is not None and await w.release_leader(view.leader)

    asked = []

    def in_sync(*answers: bool, meanwhile=None):
        left, first = list(answers), [True]

        def ask() -> bool:
            answer = left.pop(0) if len(left) > 1 else left[0]
            asked.append(answer)
            if meanwhile is not None and first[0]:  # between the first read and its write
                first[0] = False
                t = threading.Thread(target=meanwhile)  # its own event loop: this one runs
                t.start()
                t.join(30)
            return answer
        return ask

    try:
        assert not fencer.unfence(in_sync(True)), "no record yet: nothing to undo"
        assert fencer(), "the fence"
        assert run(disk("node2")) is DiskState.OUTDATED
        assert not fencer.unfence(in_sync(False)) and asked == [False]
        assert run(disk("node2")) is DiskState.OUTDATED, "not in sync: the fence stays"
        assert not other.unfence(in_sync(True)) and asked == [False], "its peer is not fenced"
        # A fence landing after the read, before the write: the compare-and-set refuses,
        # and the record is read again (then the peer is gone: nothing is written).
        assert not fencer.unfence(in_sync(True, False, meanwhile=racing))
        assert asked == [False, True, False]
        assert run(disk("node2")) is DiskState.OUTDATED, "the fence that came later stays"
        # Without the leader key (an agent paused or stepping down), still unfenced.
        run(release())
        assert fencer.unfence(in_sync(True)) and asked == [False, True, False, True]
        assert run(disk("node2")) is DiskState.UP_TO_DATE
        assert not fencer.unfence(in_sync(True)) and len(asked) == 4, "already UpToDate"
        assert run(lead()) is not None
        assert fencer() and run(disk("node2")) is DiskState.OUTDATED, "a later fence writes over it"
        # A leadership taken between the read and the write voids the unfence: its holder
        # may promote on the record it read (review 24); read again, the peer is gone.
        run(release())
        assert not fencer.unfence(in_sync(True, False, meanwhile=lambda: run(lead())))
        assert asked[-2:] == [True, False]
        assert run(disk("node2")) is DiskState.OUTDATED
    finally:
        fencer.close()
        other.close()
        racing.close()
