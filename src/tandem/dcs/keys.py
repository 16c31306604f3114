"""Where each piece of cluster state lives in the key space, and how it is encoded.

Pure functions, no I/O: the etcd backend reads every key under the cluster's
prefix in one range request (so the snapshot is one revision) and hands the raw
key-values to :func:`view_from_kvs`. Values are JSON with sorted keys, so the
same value always encodes to the same bytes and a transaction can compare a
value byte for byte (the leader key's value is compared that way).

Layout under ``/tandem/<cluster>/``::

    leader               {"node", "epoch"}          on the holder's lease
    epoch                {"epoch"}                  last epoch handed out (no lease)
    members/<node>       Member                     on the node's lease
    volume/<resource>    VolumeState                written by the leader, fenced
    switchover           Switchover                 written by the operator
    maintenance          {}                         present = maintenance on
    standby/<node>       {}                         present = node in standby
    cleanup/<node>       {"at"}                     written by the operator: forget node's failures
    history              [HistoryEntry, ...]        appended by the leader, fenced
    fence                Fence                      a confirmed fence of the leader key's node,
                                                    written only while that key exists

The epoch counter's floor is also the highest ``epoch_seen`` of the members: each
volume stores the epoch of its latest promotion, and the split-brain policy ranks
by it, so a recreated DCS (an empty ``epoch`` key) must not hand out an epoch
below one already on a disk.

``epoch`` and ``standby/`` are additions to the DESIGN list: the epoch must
survive the leader key (which vanishes with its lease), and standby is an
operator's order about a node that its own lease-bound member key cannot carry;
so is ``cleanup/`` (Pacemaker's cleanup): the node's agent acts on each new
revision of its key, which then stays as a harmless record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tandem.dcs.view import (
    ClusterView,
    Fence,
    Leader,
    Member,
    Switchover,
    VolumeState,
    count,
    history_from_value,
)

HISTORY_LIMIT = 100  #: entries kept in the history key, oldest dropped first


@dataclass(frozen=True, slots=True)
class RawKV:
    """One key as the DCS returned it."""

    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    lease: int = 0


class Keys:
    """Key names of one cluster."""

    def __init__(self, cluster: str):
        if not cluster or "/" in cluster:
            raise ValueError(f"cluster name {cluster!r}: must be non-empty and contain no '/'")
        self.cluster = cluster
        self.prefix = f"/tandem/{cluster}/"
        self.leader = self.prefix + "leader"
        self.epoch = self.prefix + "epoch"
        self.members = self.prefix + "members/"
        self.volumes = self.prefix + "volume/"
        self.switchover = self.prefix + "switchover"
        self.maintenance = self.prefix + "maintenance"
        self.standbys = self.prefix + "standby/"
        self.cleanups = self.prefix + "cleanup/"
        self.history = self.prefix + "history"
        self.fence = self.prefix + "fence"

    def member(self, node: str) -> str:
        return self.members + _name(node)

    def volume(self, resource: str) -> str:
        return self.volumes + _name(resource)

    def standby(self, node: str) -> str:
        return self.standbys + _name(node)

    def cleanup(self, node: str) -> str:
        return self.cleanups + _name(node)


def _name(part: str) -> str:
    if not part or "/" in part:
        raise ValueError(f"{part!r}: a node or resource name must be non-empty and contain no '/'")
    return part


def encode(value: Any) -> bytes:
    """Canonical JSON: equal values give equal bytes (transactions compare them)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        return None


def view_from_kvs(keys: Keys, revision: int, kvs: Iterable[RawKV]) -> ClusterView:
    """Build the snapshot from every key under the prefix.

    Garbage in a value never breaks the view: an undecodable leader key still
    counts as held (nobody may take a key that exists), other undecodable keys
    are skipped, and a field of the wrong type reads as absent. A view that
    failed on one hand-edited value stopped every agent's HA loop before it
    decided anything, and the volume's fence-peer with it (review 23).
    """
    leader = switchover = fence = None
    members: list[Member] = []
    volumes: list[VolumeState] = []
    standby: set[str] = set()
    cleanups: dict[str, int] = {}
    history: tuple = ()
    maintenance = False
    epoch = epoch_rev = 0
    for kv in kvs:
        data = decode(kv.value)
        ok = isinstance(data, dict)
        if kv.key == keys.leader:
            leader = Leader.from_value(data if ok else {"node": "<undecodable>"},
                                       kv.create_revision, kv.lease)
        elif kv.key == keys.epoch:
            epoch, epoch_rev = (count(data.get("epoch")) if ok else 0), kv.mod_revision
        elif kv.key == keys.maintenance:
            maintenance = True
        elif kv.key == keys.switchover and ok:
            switchover = Switchover.from_value(data, kv.mod_revision)
        elif kv.key == keys.fence and ok:
            fence = Fence.from_value(data)
        elif kv.key == keys.history and isinstance(data, list):
            history = history_from_value(d for d in data if isinstance(d, dict))
        elif kv.key.startswith(keys.members) and ok:
            members.append(Member.from_value(kv.key[len(keys.members):], data, kv.mod_revision))
        elif kv.key.startswith(keys.volumes) and ok:
            volumes.append(VolumeState.from_value(kv.key[len(keys.volumes):], data, kv.mod_revision))
        elif kv.key.startswith(keys.standbys):
            standby.add(kv.key[len(keys.standbys):])
        elif kv.key.startswith(keys.cleanups):
            cleanups[kv.key[len(keys.cleanups):]] = kv.mod_revision
    return ClusterView(cluster=keys.cluster, revision=revision, leader=leader,
                       members=tuple(sorted(members, key=lambda m: m.node)),
                       volumes=tuple(sorted(volumes, key=lambda v: v.resource)),
                       switchover=switchover, maintenance=maintenance,
                       standby=frozenset(standby), history=history,
                       cleanups=tuple(sorted(cleanups.items())),
                       epoch=max(epoch, leader.epoch if leader else 0,
                                 *(m.epoch_seen for m in members)), epoch_revision=epoch_rev,
                       fence=fence)
