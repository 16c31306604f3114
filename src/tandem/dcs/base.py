"""The DCS contract every backend implements (after Patroni's ``AbstractDCS``).

The agent's safety rests on these promises, not on etcd as such, so each
operation says what consistency it needs. Rules common to all of them:

- **Bounded time.** Every call returns or raises :class:`DCSError` within the
  backend's operation timeout, however the DCS misbehaves (hung member,
  dropped packets, lost quorum). The leader must be able to decide to demote
  before its lease deadline, so a call may never block longer than that.
- **Unreachable means DCSError**, never a False or an empty view: "I could not
  ask" must not be confused with "the answer is no".
- **Linearizable reads.** A view reflects every write acknowledged before the
  read began (etcd: quorum reads, never serializable ones).
- **Fencing.** Every write that only the leader may make is one transaction
  that compares the leader key's create_revision (the fencing token,
  :attr:`Leader.revision`) and value; if leadership changed hands, the write
  does nothing and the call returns False.
- **One lease per node session.** The leader key and the node's member key
  hang on the same lease, so they vanish together when the node stops
  renewing it.

The snapshot types live in :mod:`tandem.dcs.view` and are re-exported here.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tandem.dcs.view import (
    ClusterView,
    Fence,
    HistoryEntry,
    Leader,
    Member,
    NodeRole,
    Switchover,
    VolumeState,
)
from tandem.errors import TandemError
from tandem.volume.states import DiskState

__all__ = [
    "DCS", "DCSError", "Renewal", "Change", "ClusterView", "Fence", "HistoryEntry", "Leader", "Member",
    "NodeRole", "Switchover", "VolumeState", "DiskState",
]


class DCSError(TandemError):
    """The DCS could not be asked (unreachable, no quorum, timed out) or refused."""


@dataclass(frozen=True, slots=True)
class Renewal:
    """Result of a lease keepalive.

    `deadline` is the local monotonic time until which the lease is certain to
    be alive everywhere: the time the keepalive was *sent* plus the TTL the DCS
    granted (the DCS starts counting when it receives the request, which is
    later). `ttl` 0 means the lease had already expired: every key on it is gone.
    """

    ttl: float
    deadline: float
    lease: int | None = None  #: the lease kept alive (or granted)

    @property
    def lost(self) -> bool:
        return self.ttl <= 0


@dataclass(frozen=True, slots=True)
class Change:
    """One change under the cluster prefix, as a watch reports it."""

    key: str  #: relative to the cluster prefix, e.g. "leader", "members/node2"
    deleted: bool
    revision: int


class DCS(ABC):
    """One node's session with the cluster's DCS."""

    def __init__(self, cluster: str, node: str, ttl: int):
        self.cluster = cluster
        self.node = node
        self.ttl = ttl
        #: the last lease this session was granted, and what the grant vouches for:
        #: an acquire on a fresh lease knows its deadline before the first keepalive
        self.granted: Renewal | None = None

    # --- reading -----------------------------------------------------------------
    @abstractmethod
    async def load(self) -> ClusterView:
        """All of the cluster's keys, read linearizably at one revision.

        Raises DCSError if the DCS is unreachable or has no quorum."""

    @abstractmethod
    def watch(self, start_revision: int | None = None) -> AsyncIterator[Change]:
        """Changes under the cluster prefix, from `start_revision` on (give
        ``view.revision + 1`` to miss nothing since a view), delivered as soon as
        the DCS commits them, so the agent reacts without waiting for its timer.

        The iterator raises DCSError when the stream breaks; a silently stalled
        stream is possible (partition), so the agent must keep its timer too."""

    # --- leadership --------------------------------------------------------------
    @abstractmethod
    async def attempt_to_acquire_leader(self, view: ClusterView) -> Leader | None:
        """Atomically create the leader key on this node's lease if it is absent,
        with epoch ``view.epoch + 1``.

        The creation is one transaction that also re-checks what the caller's
        eligibility was decided from: the epoch and the volume records have not
        changed since `view`, maintenance is off and this node is not in standby.
        Returns the new Leader (its revision is the fencing token), or None if
        the key exists or any of those checks failed (someone else won, or the
        view is stale: load again). Raises DCSError if the DCS is unreachable;
        the caller must then assume it is not leader."""

    @abstractmethod
    async def take_over_leader(self, old: Leader, view: ClusterView) -> Leader | None:
        """Fenced takeover: delete `old`'s leader key if it is still exactly that
        key (same fencing token), then acquire as :meth:`attempt_to_acquire_leader`.

        Only for a node whose fencing agent confirmed that `old.node` is powered
        off: it skips waiting for the old lease to expire. Returns None if the
        key changed meanwhile or another node won the race."""

    @abstractmethod
    async def record_fence(self, fence: Fence, leader: Leader) -> bool:
        """Record a confirmed fence of `leader`'s node, only while `leader` still
        holds the key (one transaction, the fenced-write compares). False if the
        key changed: the record would describe a leadership that is over."""

    @abstractmethod
    async def lease_silence(self, lease: int) -> float | None:
        """For how many whole seconds the DCS has seen no keepalive of `lease`
        (granted TTL minus remaining TTL); None if the lease is gone. How a
        replica judges that the leader stopped renewing, from the DCS's own
        clock rather than from the leader's word."""

    @abstractmethod
    async def renew_lease(self) -> Renewal:
        """Keep this node's session lease alive (granting one if it has none).

        Returns the TTL and the local deadline (see :class:`Renewal`); a lost
        lease is reported with ttl 0, not raised, and the next call grants a new
        lease (the keys on the old one are gone and must be written again).
        Raises DCSError if the DCS is unreachable: the caller keeps its previous
        deadline and must demote before it."""

    @abstractmethod
    async def release_leader(self, leader: Leader) -> bool:
        """Delete the leader key if it is still `leader`'s (fencing token).

        A graceful step-down: the other node can acquire at once instead of
        after the TTL. False if the key was no longer ours."""

    # --- node and volume state ---------------------------------------------------
    @abstractmethod
    async def touch_member(self, member: Member) -> None:
        """Write this node's member key on its lease (last writer wins: only the
        node itself writes it)."""

    @abstractmethod
    async def set_volume_state(self, state: VolumeState, leader: Leader) -> bool:
        """Write a volume record, fenced by `leader`'s token and compare-and-set
        on `state.revision` (the record's mod_revision when it was read; 0 to
        create it). False if leadership changed or the record changed meanwhile.

        This is the fence-peer write: a primary that lost its peer must get True
        here ("peer Outdated" recorded under its own leadership) before it
        completes writes; otherwise its I/O stays suspended."""

    @abstractmethod
    async def clear_volume_fence(self, state: VolumeState, leader: Leader | None) -> bool:
        """Write a volume record with a compare-and-set on `state.revision` and on the
        leader key being the one read with it (`leader`; None: no key), not under this
        node's own key: the volume daemon's unfence-peer, which records its peer
        UpToDate again once the link says the peer has every write. Any later fence
        writes a newer revision (a fence always writes), so it cannot be undone by
        an unfence that read before it; a new leadership since the read voids it too
        (its holder may promote on the record it read: review 24). The unfence must
        not wait for leadership: a Primary whose agent is paused or stepping down is
        the only one that knows its peer is in sync again (simulation seed 185: the
        stale Outdated was adopted by the peer, and after the Primary's disk failed
        no disk could be promoted). False if the record or the leadership changed
        since they were read."""

    async def mark_peer_outdated(self, resource: str, peer: str, leader: Leader,
                                 attempts: int = 3, view: ClusterView | None = None) -> bool:
        """Record `peer`'s disk as Outdated for `resource`, under `leader`.

        Read-modify-write over :meth:`set_volume_state`; retried when only the
        record changed, stops when leadership did. `view`: a snapshot just read
        (the first try uses it instead of reading again).

        A record that says Outdated already is written again all the same: the new
        revision makes a compare-and-set based on the older one fail. Otherwise the
        leader's agent, which read the record (peer Outdated) and then its volume
        (peer Connected, UpToDate) just before the link dropped, would still write
        "peer UpToDate" after this fence returned True without writing, and the peer
        could take over with older data."""
        for i in range(attempts):
            if view is None or i > 0:
                view = await self.load()
            if view.leader is None or view.leader.revision != leader.revision:
                return False
            current = view.volume(resource) or VolumeState.empty(resource)
            if await self.set_volume_state(current.with_disk(peer, DiskState.OUTDATED), leader):
                return True
        return False

    @abstractmethod
    async def append_history(self, entry: HistoryEntry, leader: Leader) -> bool:
        """Append to the history (keeping the last entries), fenced by `leader`."""

    # --- operator requests -------------------------------------------------------
    @abstractmethod
    async def set_switchover(self, request: Switchover) -> bool:
        """Create the switchover request if none is pending (False otherwise)."""

    @abstractmethod
    async def clear_switchover(self, expected: Switchover | None = None) -> bool:
        """Delete the switchover request; with `expected`, only if it is still
        that request (its revision), so a newer request is never lost."""

    @abstractmethod
    async def set_maintenance(self, on: bool) -> None:
        """Turn maintenance mode on (every agent stops acting, resources are
        left alone) or off."""

    @abstractmethod
    async def set_standby(self, node: str, on: bool) -> None:
        """Put `node` in standby (it never acquires; as leader it hands over) or
        take it out."""

    @abstractmethod
    async def request_cleanup(self, node: str) -> None:
        """Ask `node`'s agent to forget its resource failures (the operator fixed
        the cause): it is eligible for leadership again at once."""

    @abstractmethod
    async def close(self) -> None:
        """Close connections; the lease is left to expire (a crash does the same)."""

    async def __aenter__(self) -> DCS:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def monotonic() -> float:
    """The clock every deadline is on (one clock for all lab hosts)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)
