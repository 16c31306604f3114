"""What one node knows about itself, and what the decision core answers.

The cluster-wide snapshot is :class:`tandem.dcs.view.ClusterView`; this module
holds the node-local half of a decision's input (:class:`LocalState`, filled
by the agent from its resources, volume, lease and fencing agent at the start
of a cycle) and its output (:class:`Decision`). Both are frozen: the agent
object is the only mutable thing in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tandem.volume.states import DiskState


class Action(StrEnum):
    """What the agent does this cycle. The values appear in logs and status."""

    NOTHING = "nothing"  #: maintenance: touch nothing
    FOLLOW = "follow"  #: stay secondary, keep replicating (and renew the member key)
    ACQUIRE = "acquire"  #: race for the free leader key; on success promote
    FENCE_LEADER = "fence_leader"  #: run the fencing agent against the leader's node (`target`)
    FENCED_TAKEOVER = "fenced_takeover"  #: the old leader is fenced: replace its key, then promote
    PROMOTE = "promote"  #: I hold the key: renew, start the resource group in order
    LEAD = "lead"  #: I hold the key: renew, keep resources started and monitored
    STEP_DOWN = "step_down"  #: graceful: stop resources in reverse order, then release the key
    DEMOTE = "demote"  #: at once: suspend I/O and stop resources; the key is not ours to keep

    @property
    def is_leading(self) -> bool:
        """Actions that keep or start writable resources under a held key."""
        return self in (Action.PROMOTE, Action.LEAD)

    @property
    def seeks_leadership(self) -> bool:
        return self in (Action.ACQUIRE, Action.FENCE_LEADER, Action.FENCED_TAKEOVER)


@dataclass(frozen=True, slots=True)
class LocalState:
    """The node's own facts at the start of a cycle.

    Times are on the monotonic clock the caller passes to ``decide`` as `now`.
    `lease_deadline` is ``Renewal.deadline`` of the last successful keepalive
    (None: no lease yet). `fenced_token` is the fencing token
    (``Leader.revision``) of a leader whose node the fencing agent confirmed is
    powered off; tying it to the token keeps an old fence result from ever
    applying to a newer leader.
    """

    node: str
    disk_state: DiskState | None
    healthy: bool = True
    is_primary: bool = False  #: resources started, volume Primary: this node can write
    dcs_ok: bool = True  #: the view was read this cycle (False: it is the last known one)
    lease_deadline: float | None = None
    nofailover: bool = False
    fencing: bool = False  #: a fencing agent for the leader's node is configured and not backing off
    #: replication link to the leader down and the DCS saw no keepalive of its lease for a while
    leader_unreachable: bool = False
    fenced_token: int | None = None
    margin: float = 0.3  #: demote this long before the lease deadline

    def deadline_passed(self, now: float) -> bool:
        return self.lease_deadline is None or now >= self.lease_deadline - self.margin


@dataclass(frozen=True, slots=True)
class Decision:
    """One cycle's outcome: the action and one sentence saying what and why.

    `target` names the node an action is about (the step-down successor, the
    node to fence). `clear_switchover`: the request is done or moot, the leader
    should delete it."""

    action: Action
    reason: str
    target: str | None = None
    clear_switchover: bool = False

    def __str__(self) -> str:
        return self.reason
