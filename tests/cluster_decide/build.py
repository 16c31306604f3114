"""Small builders for decision inputs, so each table row reads as one line."""

from __future__ import annotations

from tandem.cluster.view import LocalState
from tandem.dcs.view import ClusterView, Leader, Member, NodeRole, Switchover, VolumeState
from tandem.volume.states import DiskState

UP, OUT, INC, FAILED = DiskState.UP_TO_DATE, DiskState.OUTDATED, DiskState.INCONSISTENT, DiskState.FAILED
NOW = 1000.0
TOKEN = {"node1": 41, "node2": 42}


def member(node: str, disk: DiskState | None = UP, healthy: bool = True, nofailover: bool = False,
           role: NodeRole = NodeRole.REPLICA) -> Member:
    return Member(node, role, disk, healthy, nofailover)


def view(leader: str | None = None, *, epoch: int = 3, members: tuple[Member, ...] | None = None,
         disks: dict[str, DiskState] | None = None, switchover: Switchover | None = None,
         maintenance: bool = False, standby: frozenset[str] = frozenset(),
         fresh: bool = False) -> ClusterView:
    """Two healthy UpToDate members unless told otherwise; one volume r0 (none if fresh)."""
    members = members if members is not None else (member("node1"), member("node2"))
    disks = disks if disks is not None else {"node1": UP, "node2": UP}
    vol = VolumeState("r0", tuple(sorted(disks.items())), "g1", revision=7)
    held = Leader(leader, epoch, TOKEN.get(leader, 99), lease=5) if leader else None
    return ClusterView("c", revision=100, leader=held, members=members, volumes=() if fresh else (vol,),
                       switchover=switchover, maintenance=maintenance, standby=standby,
                       epoch=epoch, epoch_revision=10)


def local(node: str = "node1", disk: DiskState | None = UP, *, primary: bool = False,
          deadline: float | None = NOW + 0.7, **kw) -> LocalState:
    return LocalState(node=node, disk_state=disk, is_primary=primary, lease_deadline=deadline, **kw)
