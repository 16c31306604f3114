"""The volume's fence-peer step done against the DCS: record the peer's disk
Outdated under this node's leader key, before a write completes without the peer.

A Primary that lost its peer holds every write until this record is made, so the
time it takes is write unavailability. Two ways to run it share one function:

- ``tandem fence-peer RESOURCE``, a command for ``fence_peer_command`` (a process
  per attempt: starting Python and the CLI alone took 0.4 s on a quiet machine and
  1.5-3.3 s under the campaigns' load);
- :class:`DcsFencer`, inside the volume daemon (``fence_peer = "dcs"``): no process,
  and one DCS session across attempts, so the etcd member that answered last is
  asked first. A fresh process always started at the node's own member: while that
  member was paused or cut off, every attempt timed out on it although the others
  answered (torture campaign 82's volume logs). Within one attempt, a member that
  fails is passed over for the next.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tandem.dcs.base import DCS, DCSError
from tandem.errors import TandemError
from tandem.volume.states import DiskState

if TYPE_CHECKING:
    from tandem.config import Config
    from tandem.dcs.pki import HostTls
    from tandem.volume.spec import VolumeSpec

log = logging.getLogger("tandem.volume")


class FencePeerRefused(TandemError):
    """The record was not made (not the leader, leadership changed, DCS unreachable)."""


async def record_peer_outdated(dcs: DCS, resource: str, me: str, peer: str,
                               attempts: int = 1) -> None:
    """Mark `peer`'s disk Outdated for `resource`, fenced by `me`'s leader key.

    Up to `attempts` tries, each on the next etcd member after a connection
    failure (a DCS client moves on by itself); a node that does not hold the
    leader key is refused at once. Raises FencePeerRefused with the reason."""
    last: DCSError | None = None
    for _ in range(max(1, attempts)):
        try:
            view = await dcs.load()
            if view.leader is None or view.leader.node != me:
                raise FencePeerRefused(f"fence-peer: {me} does not hold the leader key; refusing")
            if await dcs.mark_peer_outdated(resource, peer, view.leader, view=view):
                return
            raise FencePeerRefused(f"fence-peer: could not record {peer} Outdated"
                                   " (leadership changed?)")
        except DCSError as e:
            last = e
    raise FencePeerRefused(f"fence-peer: {last}")


class DcsFencer:
    """The fence-peer callback of a volume daemon run by the cluster agent: a
    callable for :class:`tandem.volume.replicator.Replicator` (True = recorded).

    Runs on the replicator's fencing thread, on an event loop of its own. The
    gRPC channel is closed after every call (an idle channel could be half-open
    when the next fence comes, hours later); the session remembers which member
    answered."""

    def __init__(self, cluster: str, node: str, peer: str, resource: str,
                 endpoints: Sequence[str], op_timeout: float, tls: HostTls | None = None):
        from tandem.dcs.etcd import EtcdDCS
        self.node, self.peer, self.resource = node, peer, resource
        self._dcs = EtcdDCS(cluster, node, endpoints, op_timeout=op_timeout, tls=tls)
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()  # one event loop: one call at a time

    @classmethod
    def for_volume(cls, cfg: Config, spec: VolumeSpec) -> DcsFencer:
        from tandem.config import etcd_endpoints, etcd_tls
        return cls(cfg.cluster.name, spec.node, spec.peer, spec.resource,
                   etcd_endpoints(cfg, spec.node), cfg.etcd.op_timeout, etcd_tls(cfg, spec.node))

    @property
    def endpoint(self) -> str:
        """The etcd member the next call asks first."""
        return self._dcs.endpoint

    async def _fence(self) -> None:
        try:
            await record_peer_outdated(self._dcs, self.resource, self.node, self.peer,
                                       attempts=len(self._dcs.endpoints))
        finally:
            await self._dcs.close()

    def __call__(self) -> bool:
        with self._lock:
            try:
                self._loop.run_until_complete(self._fence())
            except FencePeerRefused as e:
                log.error("%s", e)
                return False
        log.info("fence-peer: %s recorded Outdated for %s in the DCS", self.peer, self.resource)
        return True

    async def _unfence(self, in_sync: Callable[[], bool]) -> bool:
        try:
            for _ in range(3):  # the record changed between the read and the write: again
                view = await self._dcs.load()
                record = view.volume(self.resource)
                if record is None or record.disk(self.peer) in (None, DiskState.UP_TO_DATE):
                    return False
                # Asked only now, after the record was read: a fence of a later loss runs
                # after this call (the lock) and writes over it; a compare-and-set on the
                # record's revision refuses this write if anything else wrote since.
                if not in_sync():
                    return False
                if await self._dcs.clear_volume_fence(record.with_disk(self.peer, DiskState.UP_TO_DATE),
                                                      view.leader):
                    return True
            return False
        finally:
            await self._dcs.close()

    def unfence(self, in_sync: Callable[[], bool]) -> bool:
        """Record the peer's disk UpToDate again, if the record says otherwise and
        `in_sync()` (asked after the record was read) says the peer has every write:
        DRBD's unfence-peer after a resync. Not only as the leader key's holder: a
        Primary whose agent is paused or stepping down may be the only node that knows
        (see DCS.clear_volume_fence). True if written, False if there was nothing to
        write; DCSError if the DCS did not answer (the caller tries again)."""
        with self._lock:
            return self._loop.run_until_complete(self._unfence(in_sync))

    def close(self) -> None:
        with self._lock:
            self._loop.close()
