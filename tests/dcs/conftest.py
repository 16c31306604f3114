"""A real three-member etcd in the lab (node1, node2, witness), one per module,
with etcd's leader on the witness before every test."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tandem.dcs.etcd import EtcdDCS
from tandem.dcs.etcd_server import LabEtcd


@pytest.fixture(scope="module")
def etcd(lab):
    cluster = LabEtcd(lab)
    cluster.start()
    cluster.move_leader("witness")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_ok(etcd):
    """Each test starts with all members up and etcd's leader on the witness, and
    ends with faults healed and crashed members restarted (own teardown: the
    `healed` fixture would run after this one, too late to restart members)."""
    etcd.start()
    etcd.move_leader("witness")
    yield etcd
    lab = etcd.lab
    lab.faults.heal()
    for h in lab.read_state()["down"]:
        lab.faults.restart(h)
    etcd.start()
    etcd.move_leader("witness")


@pytest.fixture
def cluster_name() -> str:
    """A fresh key prefix per test: no test sees another's keys."""
    return "c" + secrets.token_hex(3)


def session(etcd: LabEtcd, cluster: str, node: str, hosts: tuple[str, ...] | None = None,
            **kw) -> EtcdDCS:
    """A DCS session for `node`, talking to the members on `hosts` (default: its own)."""
    eps = [etcd.endpoint(h) for h in (hosts or (node,))]
    kw.setdefault("tls", etcd.members[node].tls if node in etcd.members else etcd.client_tls)
    return EtcdDCS(cluster, node, eps, **kw)


def run(coro):
    return asyncio.run(coro)
