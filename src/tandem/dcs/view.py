"""Immutable snapshots of what the DCS holds (after Patroni's `Cluster`/`Member`/`Leader`).

Each agent cycle reads one `ClusterView` (all keys at one etcd revision) and
decides from it alone; nothing here is ever mutated, and only the agent object
keeps mutable flags. The types are frozen dataclasses built by ``from_...``
constructors (from the decoded JSON of a key) or ``empty()``, with small
predicates so that the decision code reads like the decision table.

The string values of the enums and the JSON field names are stored in etcd and
shown by ``tandem status --json``: add, never rename.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tandem.volume.states import DiskState


class NodeRole(StrEnum):
    """What a node's agent reports it is doing (the member key's ``role``)."""

    PRIMARY = "primary"  #: resources started, writable
    REPLICA = "replica"  #: secondary, replicating from the primary
    STOPPED = "stopped"  #: resources stopped (starting, standby, failed)


@dataclass(frozen=True, slots=True)
class Leader:
    """The holder of the leader key.

    `revision` is the key's etcd create_revision: it changes whenever the key
    is created anew, never otherwise, so it is the **fencing token** every
    leadership-dependent write compares. `epoch` is the human-sized counter of
    leaderships (1, 2, 3, ...) shown in status and history.
    """

    node: str
    epoch: int
    revision: int
    lease: int = 0

    @classmethod
    def from_value(cls, data: Mapping[str, Any], revision: int, lease: int) -> Leader:
        return cls(node=str(data.get("node", "")), epoch=count(data.get("epoch")),
                   revision=revision, lease=lease)

    def to_value(self) -> dict[str, Any]:
        return {"node": self.node, "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class Member:
    """One node as its agent last reported it (key ``members/<node>``, on its lease).

    The key vanishes with the node's lease, so a member present in the view is
    a node whose agent renewed its lease within the TTL.
    """

    node: str
    role: NodeRole = NodeRole.STOPPED
    disk_state: DiskState | None = None
    healthy: bool = False
    nofailover: bool = False
    api_url: str = ""
    connection: str = ""  #: replication link state (the volume's ConnectionState)
    sync_percent: float | None = None  #: resync progress when a resync runs
    note: str = ""  #: the agent's last decision, in one sentence
    failures: int = 0  #: resource failures in a row (each doubling the time out of the race)
    last_failure: str = ""  #: what failed last, in one sentence
    warnings: tuple[str, ...] = ()  #: healthy resources the operator should look at (space low)
    #: The highest leader epoch this node's volume recorded a promotion under (its own
    #: ``primary_epoch`` or its peer's, as last exchanged): a floor for the epoch
    #: counter, which a recreated DCS would otherwise restart at 1.
    epoch_seen: int = 0
    revision: int = 0  #: mod_revision of the key

    @classmethod
    def from_value(cls, node: str, data: Mapping[str, Any], revision: int = 0) -> Member:
        disk = data.get("disk_state")
        return cls(node=node, role=_enum(NodeRole, data.get("role"), NodeRole.STOPPED),
                   disk_state=_enum(DiskState, disk, None) if disk else None,
                   healthy=data.get("healthy") is True,  # "false" (a string) is not healthy
                   nofailover=bool(data.get("nofailover", False)),
                   api_url=str(data.get("api_url", "")), connection=str(data.get("connection", "")),
                   sync_percent=_number(data.get("sync_percent"), None), note=str(data.get("note", "")),
                   failures=count(data.get("failures")), last_failure=str(data.get("last_failure", "")),
                   warnings=_strings(data.get("warnings")), epoch_seen=count(data.get("epoch_seen")),
                   revision=revision)

    def to_value(self) -> dict[str, Any]:
        return {"role": self.role.value, "disk_state": self.disk_state.value if self.disk_state else None,
                "healthy": self.healthy, "nofailover": self.nofailover, "api_url": self.api_url,
                "connection": self.connection, "sync_percent": self.sync_percent, "note": self.note,
                "failures": self.failures, "last_failure": self.last_failure,
                "warnings": list(self.warnings), "epoch_seen": self.epoch_seen}


@dataclass(frozen=True, slots=True)
class VolumeState:
    """The cluster's record of one replicated resource (key ``volume/<resource>``).

    Written only by the leader, guarded by its fencing token: it is the
    authority on which disks may be promoted. A node missing from `disks` has
    no recorded state and is not promotable while a record exists.
    """

    resource: str
    disks: tuple[tuple[str, DiskState], ...] = ()
    generation: str = ""  #: current generation identifier of the UpToDate data
    revision: int = 0  #: mod_revision of the key, 0 if absent

    @classmethod
    def from_value(cls, resource: str, data: Mapping[str, Any], revision: int = 0) -> VolumeState:
        disks = data.get("disks")
        disks = disks if isinstance(disks, dict) else {}
        return cls(resource=resource,
                   disks=tuple(sorted((str(n), _enum(DiskState, s, DiskState.OUTDATED))
                                      for n, s in disks.items())),
                   generation=str(data.get("generation", "")), revision=revision)

    @classmethod
    def empty(cls, resource: str) -> VolumeState:
        return cls(resource=resource)

    def to_value(self) -> dict[str, Any]:
        return {"disks": {n: s.value for n, s in self.disks}, "generation": self.generation}

    def disk(self, node: str) -> DiskState | None:
        return dict(self.disks).get(node)

    def is_up_to_date(self, node: str) -> bool:
        return self.disk(node) is DiskState.UP_TO_DATE

    def with_disk(self, node: str, state: DiskState) -> VolumeState:
        """A copy with `node`'s disk set to `state` (revision kept for the CAS)."""
        disks = dict(self.disks)
        disks[node] = state
        return VolumeState(self.resource, tuple(sorted(disks.items())), self.generation, self.revision)


@dataclass(frozen=True, slots=True)
class Switchover:
    """An operator's request to move leadership (key ``switchover``).

    ``leader`` set: a switchover, valid only while that node leads.
    ``leader`` None: a failover, ``tandem failover --to NODE``, for when there
    is no leader. ``candidate`` None: any eligible node.
    """

    leader: str | None = None
    candidate: str | None = None
    revision: int = 0

    @classmethod
    def from_value(cls, data: Mapping[str, Any], revision: int = 0) -> Switchover:
        return cls(leader=_name_or_none(data.get("leader")), candidate=_name_or_none(data.get("candidate")),
                   revision=revision)

    def to_value(self) -> dict[str, Any]:
        return {"leader": self.leader, "candidate": self.candidate}


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One leadership change: who became leader, at which epoch, why, when (wall clock)."""

    epoch: int
    node: str
    reason: str
    at: float

    @classmethod
    def from_value(cls, data: Mapping[str, Any]) -> HistoryEntry:
        return cls(epoch=count(data.get("epoch")), node=str(data.get("node", "")),
                   reason=str(data.get("reason", "")), at=_number(data.get("at"), 0.0))

    def to_value(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "node": self.node, "reason": self.reason, "at": self.at}


@dataclass(frozen=True, slots=True)
class Fence:
    """The last confirmed fence (key ``fence``): `node`, holder of the leader key
    with fencing token `revision`, was powered off by `by`'s fencing agent.

    Written only while that leader key still exists with that token, so a
    record can never be mistaken for a fence of a newer leadership: it applies
    exactly while ``leader.revision == fence.revision``."""

    node: str
    revision: int
    by: str = ""
    agent: str = ""
    reason: str = ""
    at: float = 0.0  #: wall clock, for people

    @classmethod
    def from_value(cls, data: Mapping[str, Any]) -> Fence:
        return cls(node=str(data.get("node", "")), revision=count(data.get("revision")),
                   by=str(data.get("by", "")), agent=str(data.get("agent", "")),
                   reason=str(data.get("reason", "")), at=_number(data.get("at"), 0.0))

    def to_value(self) -> dict[str, Any]:
        return {"node": self.node, "revision": self.revision, "by": self.by, "agent": self.agent,
                "reason": self.reason, "at": self.at}


@dataclass(frozen=True, slots=True)
class ClusterView:
    """Every tandem key of one cluster at one DCS revision."""

    cluster: str
    revision: int = 0  #: the DCS revision the snapshot was read at
    leader: Leader | None = None
    members: tuple[Member, ...] = ()
    volumes: tuple[VolumeState, ...] = ()
    switchover: Switchover | None = None
    maintenance: bool = False
    standby: frozenset[str] = field(default_factory=frozenset)
    history: tuple[HistoryEntry, ...] = ()
    #: the last epoch handed out (key ``epoch``), or the highest a member's volume saw
    #: if higher (after the DCS was recreated): the next leadership takes epoch + 1
    epoch: int = 0
    epoch_revision: int = 0  #: mod_revision of the epoch key, 0 if absent
    fence: Fence | None = None  #: the last confirmed fence (of this or an older leadership)
    cleanups: tuple[tuple[str, int], ...] = ()  #: (node, revision of its cleanup key)

    @classmethod
    def empty(cls, cluster: str) -> ClusterView:
        return cls(cluster=cluster)

    # --- predicates --------------------------------------------------------------
    def is_unlocked(self) -> bool:
        """No node holds the leader key."""
        return self.leader is None

    def is_leader(self, node: str) -> bool:
        return self.leader is not None and self.leader.node == node

    def with_epoch_floor(self, floor: int) -> ClusterView:
        """This view with `epoch` raised to at least `floor`: an agent about to take the
        leader key lifts the counter to what its own volume has seen, even before its
        member record (which carries the same floor to the others) is in the DCS."""
        return self if floor <= self.epoch else replace(self, epoch=floor)

    def member(self, node: str) -> Member | None:
        return next((m for m in self.members if m.node == node), None)

    def volume(self, resource: str) -> VolumeState | None:
        return next((v for v in self.volumes if v.resource == resource), None)

    def is_standby(self, node: str) -> bool:
        return node in self.standby

    def cleanup_revision(self, node: str) -> int:
        """Revision of the operator's last cleanup request for `node` (0: none)."""
        return next((rev for n, rev in self.cleanups if n == node), 0)

    def up_to_date_everywhere(self, node: str) -> bool:
        """True if every recorded volume says `node`'s disk is UpToDate (vacuously
        true when no volume has been recorded yet, i.e. a fresh cluster)."""
        return all(v.is_up_to_date(node) for v in self.volumes)

    def not_up_to_date(self, node: str) -> list[str]:
        """`resource: state` for each volume where `node` is not UpToDate."""
        return [f"{v.resource} is {v.disk(node) or 'unrecorded'}" for v in self.volumes
                if not v.is_up_to_date(node)]

    def fenced_token(self) -> int | None:
        """The current leader key's token if its node is confirmed fenced, else None."""
        f, lead = self.fence, self.leader
        if f is not None and lead is not None and f.revision == lead.revision and f.node == lead.node:
            return f.revision
        return None

    @property
    def last_failover(self) -> HistoryEntry | None:
        return self.history[-1] if self.history else None


def history_from_value(items: Iterable[Mapping[str, Any]]) -> tuple[HistoryEntry, ...]:
    return tuple(HistoryEntry.from_value(i) for i in items)


def count(value: Any) -> int:
    """A count from a member record or a volume's status; anything else (a newer or
    broken writer) is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _number(value: Any, default: Any) -> Any:
    """A finite number from a record (a progress, a wall-clock time); anything else
    (null, a string from a hand edit) is `default`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def _name_or_none(value: Any) -> str | None:
    """A node name from a record, None for anything else (an empty or non-text value)."""
    return value if isinstance(value, str) and value else None


def _strings(value: Any, most: int = 8, chars: int = 300) -> tuple[str, ...]:
    """A short list of sentences from a member record; anything else reads as none."""
    if not isinstance(value, list):
        return ()
    return tuple(v[:chars] for v in value[:most] if isinstance(v, str))


def _enum(kind: Any, value: Any, default: Any) -> Any:
    """Unknown values (from a newer agent) decode to `default` instead of failing the view."""
    try:
        return kind(value)
    except ValueError:
        return default
