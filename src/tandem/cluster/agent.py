"""The per-node agent: the asyncio driver around `decide()`.

Three concurrent duties, so that no slow call can delay a safety action:

* the **lease task** renews the node's etcd lease every TTL/4 and hands the
  volume daemon a *write lease* (deadline minus margin, on CLOCK_MONOTONIC):
  past it the volume completes no write, even if this process hangs or is
  paused;
* the **watch task** wakes the loop the moment anything under the cluster
  prefix changes (a vanished leader key starts the race at once);
* the **loop** reads one snapshot, asks `decide()`, carries the decision out,
  and publishes the node's member key with that decision's sentence.

The leader also keeps the volume record in the DCS true: the peer is UpToDate
there only while it is connected and in sync; the volume's fence-peer hook
(``fence_peer = "dcs"`` in the volume daemon, see cluster.fence_peer) marks it
Outdated before any write completes without it.

Fencing (``[fencing]``): a replica whose replication link to the leader is
down, and whose DCS has seen no keepalive of the leader's lease for
``leader_silent_after`` s, runs the fencing agent against the leader's node
in the background (the loop keeps running). Only a *confirmed* fence is
recorded in the DCS, guarded on the leader key's token; decide() then sees
``fenced_token`` and answers FENCED_TAKEOVER, which replaces that exact key
and promotes without waiting for the lease. A failed or unconfirmed fence
changes nothing: the replica waits for the lease, as without fencing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from tandem.cluster.dbgroup import VIP_REFRESH_SLACK, build_db_group, vip_lifetime, vip_takeover_grace
from tandem.cluster.decide import (
    Adoption,
    adoption_to_undo,
    decide,
    fence_to_adopt,
    leader_volume_record,
    record_write_needed,
    start_failure_excuse,
)
from tandem.cluster.fencing import FenceResult, fence_agent
from tandem.cluster.loopwatch import LoopWatch
from tandem.cluster.notify import Notifier
from tandem.cluster.penalty import FailurePenalty
from tandem.cluster.resources import ResourceGroup
from tandem.cluster.resources.vip import Vip
from tandem.cluster.view import Action, Decision, LocalState
from tandem.cluster.volume_resource import volume_call
from tandem.config import Config, etcd_endpoints, etcd_tls
from tandem.dcs.base import DCSError, Renewal
from tandem.dcs.etcd import EtcdDCS
from tandem.dcs.view import ClusterView, Fence, HistoryEntry, Leader, Member, NodeRole, VolumeState, count
from tandem.errors import TandemError
from tandem.lab.events import record_lab_event as lab_event
from tandem.volume.control import ControlError, ControlUnanswered
from tandem.volume.spec import VolumeSpec
from tandem.volume.states import DiskState

log = logging.getLogger("tandem.agent")

#: lease keepalive period cap: replicas judge the leader's liveness by the age of
#: its last keepalive, so a long TTL must not mean rare keepalives
MAX_RENEW_PERIOD = 0.5
VOLUME_STATUS_GRACE = 2.5
"""Seconds a primary decides on the volume's last status while status calls fail
(two 1 s timeouts and the cycles between them; see Agent._volume_for_decision)."""


def _epoch_seen(volume_status: dict[str, Any]) -> int:
    """The highest leader epoch the volume recorded a promotion under (its own or its
    peer's); 0 from a status without it (a daemon older than the field)."""
    return count(volume_status.get("epoch_seen", volume_status.get("primary_epoch")))


def _really_cancelled() -> bool:
    """True if this task itself was asked to stop (not a gRPC call cancelled under it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _cancel(task: asyncio.Future, timeout: float) -> None:
    """Cancel `task` and give it `timeout` s to unwind. Its outcome is dropped (an
    exception it ends with is retrieved, not raised here); a cancellation of the
    caller itself still propagates."""
    if not task.done():
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.wait({task}, timeout=timeout)


def _dump_tasks() -> None:
    """SIGUSR1: every asyncio task and where it waits, into the log (for a stuck agent)."""
    import io
    for task in asyncio.all_tasks():
        buf = io.StringIO()
        with contextlib.suppress(Exception):
            task.print_stack(file=buf)
        log.warning("task %s:\n%s", task.get_name(), buf.getvalue())


class Agent:
    def __init__(self, cfg: Config, node: str, spec: VolumeSpec, data_dir: Path, run_dir: Path,
                 api_url: str = ""):
        self.cfg = cfg
        self.node = node
        self.spec = spec
        self.peer = spec.peer
        self.resource = spec.resource
        self.api_url = api_url
        self.margin = cfg.agent.margin
        self.interval = cfg.agent.interval
        self.dcs = EtcdDCS(cfg.cluster.name, node, etcd_endpoints(cfg, node), ttl=cfg.etcd.lease_ttl,
                           op_timeout=cfg.etcd.op_timeout, tls=etcd_tls(cfg, node))
        self.group: ResourceGroup = build_db_group(cfg, spec, data_dir, run_dir)
        self.clones = None  # the management tier on every node ([mgmt]), see tandem.cluster.clones
        if cfg.mgmt is not None:
            from tandem.cluster.clones import CloneSet
            self.clones = CloneSet(cfg, node, run_dir)
        self.view = ClusterView.empty(cfg.cluster.name)
        self.leader: Leader | None = None
        self.lease_deadline: float | None = None
        self.primary = False  # the group is started (or starting) on this node
        self.healthy = True
        self.volume: dict[str, Any] | None = None
        self.last: Decision | None = None
        self.wake = asyncio.Event()
        self.stopping = False
        self._last_monitor = 0.0
        self._monitor_task: asyncio.Task | None = None
        self._start_failures = 0
        self._warnings: tuple[str, ...] = ()  # from the last monitor, for the member record
        a = cfg.agent
        self.penalty = FailurePenalty(a.failure_timeout, a.failure_timeout_max, a.failure_reset)
        self._cleanup_seen: int | None = None  # revision of our cleanup key when last acted on
        self.deadline_lease: int | None = None
        self._published: tuple[dict, float] | None = None
        self._fence_task: asyncio.Task | None = None
        self._leftovers_stopped: float | None = None  # see _stop_what_ran_on_a_self_demoted_volume
        self._peer_recorded_outdated = False  # what the last volume record said of the peer
        self.renewed_at: float | None = None  #: send time of the last successful lease renewal
        self._volume_seen: tuple[dict[str, Any], float] | None = None  #: last status and when
        with contextlib.suppress(KeyError):
            db_vip = self.group.member("db-vip")
            if isinstance(db_vip, Vip):
                db_vip.lease = self._db_vip_lease
        if self.clones is not None and self.clones.vip is not None:
            # (refused once the agent stops: a start under way when the shutdown released
            # the key then takes its address back down, see Vip._start)
            clones = self.clones
            self.clones.vip.lease = lambda: ("the agent is stopping" if clones.closing
                                             else self._vip_lease("this node's"))
        with contextlib.suppress(KeyError):
            self.group.member("volume").before_start = (  # type: ignore[attr-defined]
                lambda: self._push_write_lease(timeout=5.0))
        #: revision of the volume record when the replication link was last seen up
        #: (-1: not seen since start; any Outdated record may be this disk's fence)
        self._record_rev_linked = -1
        self._adopted: Adoption | None = None  # the fence adopted last (adoption_to_undo)
        #: the record revision and nonce of an outdate asked for but not answered (the
        #: daemon paused): adopted if the status shows it carried out
        self._outdate_unanswered: tuple[int, int] | None = None
        #: the undo's argument needs every fence of the peer in the DCS (fence_peer = "dcs"):
        #: a fence_peer_command may fence without touching the record
        self._undo_allowed = cfg.volumes[spec.resource].fence_peer == "dcs"
        self._fence_failed: dict[int, float] = {}  # leader token -> when its fence failed
        self.last_fence: FenceResult | None = None
        self.notifier = Notifier(cfg.agent.notify, cfg.agent.notify_timeout, node, cfg.cluster.name)
        self._role = "replica"
        #: when the HA cycle in progress began, or a resource step of it; None between cycles
        self._cycle_busy_since: float | None = None
        self._cycle_stall_logged = False
        self.group.on_step = self._cycle_progress
        longest = max((max(m.config.start_timeout, m.config.stop_timeout) for m in self.group.members),
                      default=0.0)
        if cfg.agent.cycle_timeout < longest + 30:
            log.warning("agent.cycle_timeout (%g s) is not 30 s above the longest start or stop of a"
                        " resource (%g s): a slow one may be taken for a hung agent; raise it",
                        cfg.agent.cycle_timeout, longest)
        self.watchdog = None
        if cfg.agent.watchdog is not None:
            from tandem.cluster.watchdog import Watchdog
            self.watchdog = Watchdog(cfg.agent.watchdog, cfg.etcd.lease_ttl)

    # ====================================================================== tasks
    def request_stop(self) -> None:
        self.stopping = True
        self.wake.set()

    async def run(self) -> None:
        import signal
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
        lab_event("agent_start", node=self.node)
        if self.watchdog is not None:
            self.watchdog.arm()
        lease = asyncio.create_task(self._lease_loop(), name="lease")
        loop_watch = LoopWatch()  # until the very end: the shutdown can freeze too
        loop_watch.start()
        beat = asyncio.create_task(loop_watch.beat(), name="loop-watch")
        tasks = [asyncio.create_task(self._watch_loop(), name="watch")]
        if self.clones is not None:  # on every node, whatever its role
            tasks.append(asyncio.create_task(self.clones.supervise(self), name="clones-supervisor"))
        try:
            await self._main_loop()
        finally:
            if self.clones is not None:  # no claim of the API VIP's key from here on
                self.clones.closing = True
            for t in tasks:
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
            try:
                # The lease task keeps renewing (and the volume's write lease and the
                # VIPs' lifetimes with it) until the group has stopped and the key is
                # released: stopped first, it let the write lease run out under
                # MariaDB's clean shutdown, which then hung in held I/O until a forced
                # demotion failed it, 40-60 s with the peer refused (review 23).
                await self._shutdown()
            finally:
                lease.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.gather(lease, return_exceptions=True)
                if self.watchdog is not None:
                    self.watchdog.disarm()
                try:
                    await self.dcs.close()
                finally:
                    loop_watch.stop()
                    beat.cancel()

    async def _lease_loop(self) -> None:
        """Until cancelled: after a stop request too, while the agent steps down."""
        period = min(self.cfg.etcd.lease_ttl / 4, MAX_RENEW_PERIOD)
        last = time.monotonic()
        while True:
            started = time.monotonic()
            if started - last > 3 * period:
                log.warning("lease loop stalled for %.2f s", started - last)
            last = started
            if self._cycle_stalled(started):
                await asyncio.sleep(period)
                continue
            if self.watchdog is not None:
                self.watchdog.pet()
            try:
                r = await self._bounded(self.dcs.renew_lease(), "lease renewal")
                if r.lost:
                    if r.lease is None or r.lease == self.deadline_lease:
                        # (a late answer about a lease already replaced says nothing
                        # about the one the deadline is on)
                        self.lease_deadline = None
                    self.wake.set()
                else:
                    self._take_renewal(r)
                    # Side by side: the VIP refresh must follow the renewal closely (see
                    # VIP_REFRESH_SLACK), and a slow or failing `ip` must not hold up
                    # the volume's write lease (nor the other way round). A Primary whose
                    # key died with a lapsed lease pushes nothing: its write lease runs
                    # out by itself while it demotes (a warning every 0.25 s of the
                    # demotion before: 138 in session 36's campaign).
                    push = self.primary and self.key_deadline() is not None
                    vips, lease = await asyncio.gather(
                        self._refresh_vips(self.renewed_at + VIP_REFRESH_SLACK, self.deadline_lease),
                        self._push_write_lease() if push else asyncio.sleep(0),
                        return_exceptions=True)
                    if isinstance(vips, Exception):
                        log.warning("VIP lifetimes not refreshed: %s", vips)
                    if isinstance(lease, BaseException):
                        raise lease
            except DCSError as e:
                log.warning("lease renewal failed: %s", e)
                self.wake.set()
            except TandemError as e:
                log.warning("write lease not pushed to the volume: %s", e)
            except Exception:  # this task must never die: without it the node cannot lead
                log.exception("lease renewal failed unexpectedly")
                self.wake.set()
            except asyncio.CancelledError:
                if _really_cancelled():
                    raise
                log.warning("lease renewal was cancelled under us; retrying")
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    def _take_renewal(self, r: Renewal) -> None:
        """What a keepalive (or a grant) vouches for becomes the lease deadline."""
        if self.renewed_at is not None and r.lease == self.deadline_lease and \
                r.deadline - r.ttl < self.renewed_at:
            return  # an older answer of the same lease (a grant read after a keepalive)
        # A fresh lease after a lapse carries none of our keys: the VIPs added on the
        # old one are never extended on it (Vip.refresh checks the id; torture 73:103, 76:93).
        if self.deadline_lease is not None and self.deadline_lease != r.lease:
            log.info("lease granted anew: VIPs added on the old one are not extended")
        self.lease_deadline = r.deadline
        self.deadline_lease = r.lease
        self.renewed_at = r.deadline - r.ttl

    def _take_grant_of(self, leader: Leader | None) -> None:
        """The key is ours on a lease granted for it (ours had lapsed): its grant says
        how long it lives. Waiting for the lease loop's first keepalive instead, the
        next cycle found the key held "without a lease it has renewed" and gave it up,
        three times in 0.2 s after a 15 s pause (torture 309). Also for a key an
        acquire won after its call was abandoned, found ours by the next cycle."""
        grant = self.dcs.granted
        if (leader is not None and leader.node == self.node and grant is not None
                and grant.lease == leader.lease == self.dcs.lease_id
                and grant.lease != self.deadline_lease):  # (lease_id: not seen lost since)
            self._take_renewal(grant)

    def _cycle_progress(self, step: str) -> None:
        """A resource of the group starts or stops (bounded by its own timeout)."""
        if self._cycle_busy_since is not None:
            self._cycle_busy_since = time.monotonic()

    def _cycle_stalled(self, now: float) -> bool:
        """True while the HA cycle has been busy for more than agent.cycle_timeout
        without progress: a hung agent must not keep its key (and the volume's write
        lease) alive by renewals alone, as Patroni's leader key is updated by its HA
        loop. Nothing is renewed and the watchdog is not fed: the key expires and
        another node takes over (with a watchdog device, after this node is reset)."""
        since = self._cycle_busy_since
        if since is None or now - since <= self.cfg.agent.cycle_timeout:
            if self._cycle_stall_logged:
                log.warning("the HA cycle moved on again: renewing the lease")
                self._cycle_stall_logged = False
            return False
        if not self._cycle_stall_logged:
            self._cycle_stall_logged = True
            log.error("the HA cycle has been stuck for %.0f s (agent.cycle_timeout %g s): no longer"
                      " renewing the lease, so that another node takes over; tasks follow",
                      now - since, self.cfg.agent.cycle_timeout)
            lab_event("cycle_stalled", node=self.node, seconds=round(now - since, 1))
            _dump_tasks()
        return True

    async def _refresh_vips(self, valid_until: float, lease_id: int | None) -> None:
        """Extend the kernel lifetime of the VIPs this node holds on lease `lease_id`
        (see resources.vip), until `valid_until`: later, the renewal is too old to
        extend them on."""
        for m in self.group.members:
            if isinstance(m, Vip) and not await m.refresh(valid_until, lease_id):
                log.warning("could not refresh the lifetime of %s", m.name)
        if self.clones is not None:
            await self.clones.refresh_vip(valid_until, lease_id)

    async def _bounded(self, coro, what: str, limit: float | None = None, calls: int = 1):
        """A DCS call under :meth:`EtcdDCS.bounded`: an HA cycle stuck in one kept the
        lease loop renewing a key the cycle did nothing with."""
        return await self.dcs.bounded(coro, what, limit, calls)

    def lease_left(self) -> float | None:
        """Seconds our lease still vouches for us (its deadline less the margin; <= 0:
        ran out), None when no lease is held."""
        deadline = self.lease_deadline
        return None if deadline is None else deadline - self.margin - time.monotonic()

    def _vip_lease(self, whose: str) -> tuple[int | None, float] | str:
        """What a VIP may rest on now (see Vip.lease): our lease and the latest time a
        lifetime may be set from its last renewal, or why not."""
        left, renewed = self.lease_left(), self.renewed_at
        if left is None or renewed is None:
            return f"{whose} lease is not held"
        if left <= 0:
            return f"{whose} lease ran out {-left:.2f} s ago (less the margin)"
        return self.deadline_lease, renewed + VIP_REFRESH_SLACK

    def _db_vip_lease(self) -> tuple[int | None, float] | str:
        """The DB VIP rests on the leader key: only while this node holds it on the lease
        being renewed (after a lapse the lease is new and the key gone, whatever our
        own lease's deadline says)."""
        leader = self.leader
        if leader is None or leader.node != self.node:
            return "this node does not hold the leader key"
        if leader.lease and leader.lease != self.deadline_lease:
            return "the leader key was on a lease that lapsed"
        return self._vip_lease("the leader key's")

    def key_deadline(self) -> float | None:
        """The lease deadline that counts for leadership: only one measured on the
        lease the leader key hangs on (a fresh lease after a lapse does not extend
        a key that was on the old one)."""
        if self.leader is not None and self.leader.lease and self.leader.lease != self.deadline_lease:
            return None
        return self.lease_deadline

    async def _push_write_lease(self, timeout: float = 0.5) -> None:
        deadline = self.key_deadline()
        until = None if deadline is None else deadline - self.margin
        if until is None:
            raise TandemError("no lease deadline for the leader key yet")
        # In maintenance the agents leave resources alone: a lease that runs out then
        # (the DCS unreachable) holds the volume's I/O, but never demotes it.
        await volume_call(self.spec.control_socket, "write-lease", timeout=timeout, until=until,
                          force_secondary=not self.view.maintenance)

    async def _watch_loop(self) -> None:
        while not self.stopping:
            try:
                async for _ in self.dcs.watch():
                    self.wake.set()
            except DCSError:
                pass
            except Exception:
                log.exception("watch failed unexpectedly")
            except asyncio.CancelledError:
                if _really_cancelled():
                    raise
            await asyncio.sleep(0.2)

    async def _main_loop(self) -> None:
        while not self.stopping:
            timeout = self.interval
            if (self.primary or self.leader) and self.lease_deadline is not None:
                timeout = max(0.0, min(timeout, self.lease_deadline - self.margin - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()
            self._cycle_busy_since = time.monotonic()
            try:
                await self.cycle()
            except Exception:
                log.exception("HA cycle failed")
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                if _really_cancelled():
                    raise
                log.warning("HA cycle: a call was cancelled under us; next cycle")
            finally:
                self._cycle_busy_since = None

    # ====================================================================== one cycle
    async def cycle(self) -> Decision:
        dcs_ok = True
        limit = None
        if (self.primary or self.leader) and self.lease_deadline is not None:
            # Never read past the point where the lease obliges us to step down.
            limit = self.lease_deadline - self.margin - time.monotonic()
        try:
            if limit is not None and limit <= 0:
                raise DCSError("lease deadline reached: not waiting for the DCS")
            self.view = await self._bounded(self.dcs.load(), "read", limit)
        except DCSError as e:
            dcs_ok = False
            log.warning("DCS unreachable: %s", e)
        if dcs_ok:
            self._take_cleanup()
        self.volume = await self._volume_status()
        if dcs_ok:
            await self._adopt_recorded_outdated()
            await self._undo_stale_adoption()
        if not self.healthy and not self.primary and self.penalty.served(time.monotonic()):
            log.info("resource failure penalty served (%g s after failure %d): eligible again",
                     self.penalty.penalty(), self.penalty.failures)
            self.healthy = True
        seen = self._volume_for_decision()
        disk = DiskState(seen["disk"]) if seen else None
        fencing, unreachable = await self._fencing_inputs(dcs_ok)
        if dcs_ok and self.view.is_leader(self.node):
            self._take_grant_of(self.view.leader)
        local = LocalState(
            node=self.node, disk_state=disk, healthy=self.healthy and seen is not None,
            is_primary=self.primary, dcs_ok=dcs_ok, lease_deadline=self.key_deadline(),
            nofailover=self.cfg.agent.nofailover, margin=self.margin, fencing=fencing,
            leader_unreachable=unreachable, fenced_token=self.view.fenced_token() if dcs_ok else None)
        if self.leader and not self.view.is_leader(self.node) and dcs_ok:
            self.leader = None  # the key is gone (expired or released)
        if self.view.is_leader(self.node) and self.leader is None and self.view.leader:
            # A restarted agent still holding its key, or an acquire whose call failed
            # but was applied later (torture 103:9, the API VIP's key): the key may have
            # been free only a moment ago, so the takeover grace holds here too.
            self.leader = self.view.leader
            self._hold_vip(vip_takeover_grace(self.cfg.etcd.lease_ttl))
        decision = decide(self.view, local, time.monotonic())
        if self.last is None or decision.reason != self.last.reason:
            log.info("%s", decision.reason, extra={"fields": {"action": str(decision.action)}})
        self.last = decision
        await self.act(decision)
        self._notify_role_change(decision)
        if dcs_ok:
            await self._publish()
        return decision

    # ====================================================================== fencing
    async def _fencing_inputs(self, dcs_ok: bool) -> tuple[bool, bool]:
        """(a fencing agent may be used against the leader now, the leader looks dead).

        Dead means both: this node's replication link to it is down, and the
        DCS has had no keepalive of its lease for more than leader_silent_after
        whole seconds. A leader that renews, or that still talks to its peer,
        is never fenced."""
        lead = self.view.leader
        if not dcs_ok or lead is None or lead.node == self.node or self.primary:
            return False, False
        cfg = self.cfg.fencing_for(lead.node)
        if cfg is None:
            return False, False
        failed = self._fence_failed.get(lead.revision)
        usable = failed is None or time.monotonic() - failed >= cfg.retry_after
        if self._fence_task is not None:  # a fence is running: it reports back by itself
            return usable, True
        peer = (self.volume or {}).get("peer") or {}
        if lead.node != self.peer or not self.volume or peer.get("connection") == "Connected":
            return usable, False
        if not lead.lease:
            return usable, False
        try:
            silent = await self._bounded(self.dcs.lease_silence(lead.lease), "lease info")
        except DCSError as e:
            log.warning("cannot tell whether %s still renews its lease: %s", lead.node, e)
            return usable, False
        return usable, silent is not None and silent > cfg.leader_silent_after

    def _start_fence(self, d: Decision) -> None:
        lead = self.view.leader
        if self._fence_task is not None or lead is None or lead.node != d.target:
            return
        self._fence_task = asyncio.create_task(self._fence(lead), name=f"fence {lead.node}")

    async def _fence(self, lead: Leader) -> None:
        cfg = self.cfg.fencing_for(lead.node)
        assert cfg is not None
        address = str(self.cfg.nodes[lead.node].public_address) if lead.node in self.cfg.nodes else ""
        try:
            lab_event("fence_start", node=self.node, target=lead.node, agent=cfg.agent, token=lead.revision)
            log.warning("fencing %s (epoch %d, token %d) with the %s agent", lead.node, lead.epoch,
                        lead.revision, cfg.agent)
            res = await fence_agent(cfg).fence(lead.node, address)
            self.last_fence = res
            lab_event("fence_confirmed" if res.confirmed else "fence_failed", node=self.node,
                      target=lead.node, agent=cfg.agent, token=lead.revision, reason=res.reason,
                      seconds=res.seconds)
            if not res.confirmed:
                self._fence_failed[lead.revision] = time.monotonic()
                log.error("fencing %s failed, waiting for its lease instead: %s", lead.node, res.reason)
                return
            log.warning("fenced %s in %.2f s: %s", lead.node, res.seconds, res.reason)
            fence = Fence(node=lead.node, revision=lead.revision, by=self.node, agent=cfg.agent,
                          reason=res.reason, at=time.time())
            try:
                recorded = await self._bounded(self.dcs.record_fence(fence, lead), "record fence")
            except DCSError as e:
                recorded = False
                log.warning("could not record the fence of %s: %s", lead.node, e)
            if recorded:
                lab_event("fence_recorded", node=self.node, target=lead.node, token=lead.revision)
            else:
                log.warning("fence of %s not recorded (its key changed or the DCS is unreachable)",
                            lead.node)
        finally:
            self._fence_task = None
            self.wake.set()

    # ====================================================================== notify
    def _notify_role_change(self, d: Decision) -> None:
        role = "primary" if self.primary else "replica"
        if role == self._role:
            return
        old, self._role = self._role, role
        # Our own key once we lead: the view was read before the acquire (no leader
        # in it, or the fenced one after a fenced takeover: a hook repointing DNS at
        # $TANDEM_LEADER pointed it at the dead node).
        lead = self.leader if role == "primary" and self.leader is not None else self.view.leader
        lab_event("role_change", node=self.node, old=old, new=role)
        if self.notifier.commands:
            self.notifier.role_changed(old, role, epoch=lead.epoch if lead else self.view.epoch,
                                       leader=lead.node if lead else None, reason=d.reason)

    async def _adopt_recorded_outdated(self) -> None:
        """Mark the disk Outdated when the DCS records this node fenced (decide.fence_to_adopt)."""
        self._take_unanswered_outdate()
        self._record_rev_linked, adopt = fence_to_adopt(
            self.volume, self.view.volume(self.resource), self.node, self.primary,
            self._record_rev_linked)
        if not adopt:
            return
        nonce = secrets.randbits(62)
        try:
            self.volume = await volume_call(self.spec.control_socket, "outdate", timeout=1.0,
                                            unless_connected=True, nonce=nonce)
        except ControlUnanswered as e:
            # A paused daemon carries it out when it resumes: its status then shows the
            # mark with our nonce, for the undo (below). Without it the disk stayed
            # Outdated for good once a newer record called it UpToDate (review 36c).
            log.warning("could not mark the disk Outdated as the DCS records it: %s", e)
            record = self.view.volume(self.resource)
            if self._undo_allowed:
                self._outdate_unanswered = (record.revision if record else 0, nonce)
            return
        except TandemError as e:
            log.warning("could not mark the disk Outdated as the DCS records it: %s", e)
            return
        self._outdate_unanswered = None
        if self.volume and self.volume.get("disk") == "Outdated":
            log.warning("disk marked Outdated: the DCS records it so since the replication"
                        " link was last up (the leader fenced this node)")
        if self.volume and self.volume.get("marked") and self._undo_allowed:
            # only an Outdated this call made (not an operator's, not attach's) is undone
            record = self.view.volume(self.resource)
            self._adopted = (record.revision if record else 0, self.volume.get("mark"))

    def _take_unanswered_outdate(self) -> None:
        """An outdate asked for and not answered, found carried out: adopted as if
        answered (the volume shows the mark while its metadata is as that outdate
        left it; the undo checks the same mark)."""
        if self._outdate_unanswered is None or self._adopted is not None:
            return
        late = (self.volume or {}).get("agent_outdate") or {}
        revision, nonce = self._outdate_unanswered
        if late.get("nonce") != nonce or late.get("mark") is None:
            return  # not (yet) carried out, or not ours (an operator's outdate has none)
        self._adopted = (revision, late["mark"])
        self._outdate_unanswered = None
        log.info("the outdate asked for at DCS record revision %d was carried out late: adopted"
                 " (undone if a newer record calls this disk UpToDate)", self._adopted[0])

    async def _undo_stale_adoption(self) -> None:
        """Make the disk UpToDate again when a newer record says so (decide.adoption_to_undo)."""
        record = self.view.volume(self.resource)
        self._adopted, undo = adoption_to_undo(self._adopted, self.volume, record, self.node)
        adopted = self._adopted
        if not undo or adopted is None or record is None:
            return
        timeout = 1.0
        try:
            answer = await volume_call(self.spec.control_socket, "undo-outdate", timeout=timeout,
                                       mark=adopted[1], until=time.monotonic() + timeout)
        except ControlUnanswered as e:  # the daemon refuses it past `until`: try again
            log.warning("could not undo the fence adopted from the DCS: %s", e)
            return
        except ControlError as e:  # an error answer (or no daemon: a restart spends the mark)
            log.warning("could not undo the fence adopted from the DCS: %s", e)
            self._adopted = None
            return
        except TandemError as e:  # timed out: the daemon refuses it past `until`; try again
            log.warning("could not undo the fence adopted from the DCS: %s", e)
            return
        self.volume = answer
        if answer.get("refused") != "retry":
            self._adopted = None  # done, or the disk moved on: the mark will never do
        if answer.get("undone"):
            log.warning("disk UpToDate again: DCS record revision %d calls it so, newer than the"
                        " fence adopted at revision %d, and the disk has not changed since",
                        record.revision, adopted[0])

    async def _volume_status(self) -> dict[str, Any] | None:
        try:
            status = await volume_call(self.spec.control_socket, "status", timeout=1.0)
        except TandemError:
            return None
        self._volume_seen = (status, time.monotonic())
        return status

    def _volume_for_decision(self) -> dict[str, Any] | None:
        """The volume's status for decide(): on a primary, a status call that failed for
        less than VOLUME_STATUS_GRACE counts as the last answer. One 1 s timeout (a
        daemon paused for a moment, a machine under load) made the leader step down at
        once, a whole failover for a hiccup the volume rides out by itself (review 23;
        torture 184:34 began so). Only decide() sees the old answer: the volume record
        (leader_volume_record) and the fencing inputs use what the daemon says now, and
        while it says nothing its write lease, not renewed, holds the writes."""
        if self.volume is not None or not self.primary or self._volume_seen is None:
            return self.volume
        status, at = self._volume_seen
        return status if time.monotonic() - at < VOLUME_STATUS_GRACE else None

    async def _publish(self) -> None:
        v = self.volume or {}
        rs = v.get("resync") or {}
        member = Member(
            node=self.node, role=NodeRole.PRIMARY if self.primary else NodeRole.REPLICA,
            disk_state=DiskState(v["disk"]) if v else None,
            healthy=self.healthy and bool(v), nofailover=self.cfg.agent.nofailover,
            api_url=self.clones.api_url() if self.clones is not None else self.api_url,
            connection=(v.get("peer") or {}).get("connection", ""),
            sync_percent=rs.get("percent") if rs and not rs.get("finished") else None,
            note=self.last.reason if self.last else "",
            failures=self.penalty.recent(time.monotonic()), last_failure=self.penalty.last_reason,
            warnings=self._warnings, epoch_seen=_epoch_seen(v))
        value, now = member.to_value(), time.monotonic()
        if self._published and self._published[0] == value and now - self._published[1] < 2.0:
            return
        with contextlib.suppress(DCSError):
            await self._bounded(self.dcs.touch_member(member), "publish member")
            self._published = (value, now)

    # ====================================================================== actions
    async def act(self, d: Decision) -> None:
        a = d.action
        if a is Action.NOTHING:
            return
        if a is Action.DEMOTE:
            await self._demote(d.reason)
        elif a is Action.FOLLOW:
            await self._stop_leftovers(d.reason)
        elif a is Action.ACQUIRE:
            await self._acquire(d)
        elif a in (Action.PROMOTE, Action.LEAD):
            if a is Action.PROMOTE:
                await self._promote(d.reason)
            else:
                await self._lead()
            if d.clear_switchover:
                with contextlib.suppress(DCSError):
                    await self._bounded(self.dcs.clear_switchover(), "clear switchover")
        elif a is Action.STEP_DOWN:
            await self._step_down(d)
        elif a is Action.FENCE_LEADER:
            await self._stop_leftovers(d.reason)
            self._start_fence(d)
        elif a is Action.FENCED_TAKEOVER:
            await self._acquire(d, fenced=self.view.leader)

    async def _stop_leftovers(self, why: str) -> None:
        """A Primary volume on a node that follows: left by an agent that died (a new
        process does not lead; decide() gives DEMOTE to a node that does). Without the
        key there is no write lease: the volume holds the I/O that a clean stop would
        wait on, so the volume goes Secondary by force first, as in a demotion; a
        graceful stop here hung in MariaDB's shutdown for ~40 s while the new leader's
        promotion was refused (review 23)."""
        if self.volume and self.volume.get("role") == "Primary":
            await self._demote(f"{why} (a Primary volume left without leadership)")
            return
        await self._stop_what_ran_on_a_self_demoted_volume(why)

    async def _stop_what_ran_on_a_self_demoted_volume(self, why: str) -> None:
        """The volume demoted itself (force_secondary_after: this agent was dead or hung),
        and what ran on it is still here: MariaDB failing on EIO, ext4 mounted read-only
        over a loop device whose file is gone. Left, the next promotion here tripped over
        them (review 35). Stopped before this node follows or promotes, once per such
        demotion (its time in the volume's status), again while the stop fails."""
        v = self.volume or {}
        mark = v.get("forced_secondary_at")
        if not v.get("forced_secondary") or mark is None or mark == self._leftovers_stopped:
            return
        ok = await self._stop_group(f"{why} (what ran on the volume before it demoted itself:"
                                    f" {v['forced_secondary']})", graceful=False)
        if ok:
            self._leftovers_stopped = mark

    async def _acquire(self, d: Decision, fenced: Leader | None = None) -> None:
        try:
            view = self.view.with_epoch_floor(_epoch_seen(self.volume or {}))
            # (abandoned, an attempt may still have won: the next view shows the key ours)
            if fenced is not None:  # delete; lease grant; acquire; revoke the fenced lease
                leader = await self._bounded(self.dcs.take_over_leader(fenced, view), "fenced takeover",
                                             calls=5)
            else:  # lease grant; acquire (again on a new lease if ours ran out unnoticed)
                leader = await self._bounded(self.dcs.attempt_to_acquire_leader(view), "acquire leader",
                                             calls=3)
        except DCSError as e:
            log.warning("could not race for the leader key: %s", e)
            return
        if leader is None:
            log.info("lost the race for the leader key" if fenced is None else
                     f"fenced takeover from {fenced.node} refused: its key or the records changed")
            return
        self.leader = leader
        self._take_grant_of(leader)
        reason = ("fenced failover" if fenced is not None else
                  "switchover" if self.view.switchover else "failover")
        if fenced is None:
            # The old holder may be frozen with its VIP still up: also in a switchover,
            # whose old leader may have been paused or cut off while stepping down, and
            # its key expired instead of being released (the group's start before the
            # VIP normally outlasts the grace, so a switchover loses nothing by it).
            self._hold_vip(vip_takeover_grace(self.cfg.etcd.lease_ttl))
        extra = {"fenced": fenced.node} if fenced is not None else {}
        lab_event("leader_acquired", node=self.node, epoch=leader.epoch, **extra)
        log.info("acquired the leader key (epoch %d)%s", leader.epoch,
                 f" from fenced {fenced.node}" if fenced is not None else "")
        prev = self.view.history[-1].node if self.view.history else None
        with contextlib.suppress(DCSError):
            await self._bounded(self.dcs.append_history(
                HistoryEntry(epoch=leader.epoch, node=self.node,
                             reason=f"{reason}: {d.reason}" + (f" (after {prev})" if prev else ""),
                             at=time.time()), leader), "append history", calls=2)
        await self._promote("acquired the leader key")

    def _key_lease_left(self) -> float | None:
        deadline = self.key_deadline()
        return None if deadline is None else deadline - self.margin - time.monotonic()

    async def _start_failure_excuse(self, lease_left: float | None) -> str:
        """Why the group's failed start is not this node's fault (decide.start_failure_excuse);
        `lease_left` measured when the start ended, before a renewal could hide a lapse."""
        self.volume = await self._volume_status()
        return start_failure_excuse(self.volume, lease_left)

    async def _record_volume_state(self, promoting: bool = False) -> bool:
        """As leader: me UpToDate; the peer UpToDate only if it is connected and in sync
        (decide.leader_volume_record). Nothing without a status of an UpToDate local disk.

        `promoting`: the volume is about to be promoted on what the record says (see
        decide.record_write_needed)."""
        if self.leader is None:
            return False
        current = self.view.volume(self.resource) or VolumeState.empty(self.resource)
        want = leader_volume_record(self.volume, current, self.resource, self.node, self.peer)
        if want is None:
            return False
        if not record_write_needed(want, current, self.peer, promoting):
            self._peer_recorded_outdated = want.disk(self.peer) is not DiskState.UP_TO_DATE
            return True
        try:
            ok = await self._bounded(self.dcs.set_volume_state(want, self.leader), "record volume state")
        except DCSError as e:
            log.warning("could not record the volume state: %s", e)
            return False
        if ok:
            self._peer_recorded_outdated = want.disk(self.peer) is not DiskState.UP_TO_DATE
            log.info("volume record: %s", dict(want.disks))
        return ok

    async def _promote(self, why: str) -> None:
        if self.leader is None:  # (the volume takes a promotion without an epoch for a hand's)
            log.warning("not promoting: the leader key is not ours any more")
            return
        # Taking the key took DCS round trips: record what the volume is now.
        self.volume = await self._volume_status()
        if self.volume is None:
            log.warning("not promoting yet: the volume daemon did not answer")
            return
        # A restarted agent that takes the key at once (its peer down) never followed:
        # what ran on a volume that demoted itself goes first, or the start fails on it
        # (a busy stale mount) and its rollback leaves the old MariaDB running (review 35c).
        await self._stop_what_ran_on_a_self_demoted_volume(why)
        if not await self._record_volume_state(promoting=True):
            log.warning("not promoting yet: the volume record could not be written")
            return
        try:
            await self._push_write_lease()
        except TandemError as e:
            log.warning("not promoting yet: %s", e)
            return
        self.primary = True
        # The volume fences the peer itself if the link is down when it promotes
        # and the record above still counted the peer UpToDate (the link dropped
        # since): the promotion must not write where the cluster counts on the peer.
        volume = self.group.member("volume")
        volume.peer_outdated = self._peer_recorded_outdated  # type: ignore[attr-defined]
        volume.epoch = self.leader.epoch if self.leader else None  # type: ignore[attr-defined]
        t0 = time.monotonic()
        lab_event("promote_start", node=self.node)
        starting = asyncio.ensure_future(self.group.start())
        if not await self._within_lease(starting):
            # The start cannot finish without I/O, and the volume completes none once
            # the write lease runs out: waiting for the step's own timeout (MariaDB:
            # 120 s) kept the key's holder out of service and everyone else out of the
            # race (torture 40:38, 51:44). Give up now and demote.
            why = "the lease ran out while the resource group was starting"
            lab_event("promote_abandoned", node=self.node, seconds=round(time.monotonic() - t0, 4))
            log.warning("promotion abandoned after %.2f s: %s", time.monotonic() - t0, why)
            # Cancelled first, so that the step ends as cancelled and not as a resource
            # failure (counted towards the member's max_failures) when the volume fails
            # its I/O; then the volume: a mount or mysqld blocked in the held I/O sleeps
            # uninterruptibly, and the cancel's SIGKILL takes it only once the forced
            # demotion fails that I/O (CI: the cancel waited out its 5 s reap).
            starting.cancel()
            await self._demote_volume(why)
            await _cancel(starting, 10.0)  # the stop below waits for the group's lock anyway
            await self._demote(why, volume_demoted=True)
            return
        res = starting.result()
        lease_left = self._key_lease_left()  # before any await (review 28c)
        for op in res.ops:
            lab_event("resource", node=self.node, resource=op.resource, op=op.op, ok=op.ok,
                      seconds=round(op.seconds, 4))
        if res.ok:
            self.healthy = True
            self._start_failures = 0
            lab_event("promoted", node=self.node, seconds=round(time.monotonic() - t0, 4))
            log.info("resource group started in %.2f s: %s", time.monotonic() - t0, res.sentence)
        else:
            self.primary = False
            self._start_failures += 1
            log.error("resource group failed to start: %s", res.sentence)
            excuse = await self._start_failure_excuse(lease_left)
            if excuse:
                # E.g. the volume refused because of its disk (a resync began since the
                # decision to take the key): not a fault of this node, and the disk
                # state alone keeps it out of the race until it is UpToDate again. A
                # 10 s health penalty here left the cluster with no writer at all.
                log.warning("not counted as a node failure: %s", excuse)
            else:
                self._failed(res.sentence)
            # Do not hammer: back off (up to 2 s) before the next attempt.
            await asyncio.sleep(min(2.0, 0.1 * 2 ** min(self._start_failures, 5)))

    async def _within_lease(self, task: asyncio.Future) -> bool:
        """Wait for `task` while the leader key's lease (minus the margin) lasts:
        True if it ended in time, False once the lease ran out first."""
        while not task.done():
            left = self._key_lease_left()
            if left is None or left <= 0:
                return False
            await asyncio.wait({task}, timeout=min(left, 0.1))
        return True

    async def _lead(self) -> None:
        await self._record_volume_state()
        now = time.monotonic()
        if self._monitor_task is not None or now - self._last_monitor < self.cfg.agent.monitor_interval:
            return
        self._last_monitor = now
        # Monitoring runs beside the HA loop, never inside it: a monitor can take its
        # whole timeout (a filesystem probe on a volume whose I/O the expired write
        # lease holds: 10 s), and a recovery longer still. Awaited here, it kept the
        # loop from demoting for 22 s after the DCS came back (torture 9:15, 10:4).
        self._monitor_task = asyncio.create_task(self._monitor(), name="monitor")

    async def _monitor(self) -> None:
        try:
            res = await self.group.check()
            self._warnings = tuple(h.warning for h in res.health.values() if h.warning)
            if not res.ok and res.failover_needed and self.primary:
                if res.new_failure:  # (a resource given up on already is not one more)
                    log.error("%s", res.sentence)
                    self._failed(res.sentence)
                self.wake.set()
            elif res.ok and self.primary and not self.healthy and all(
                    h.is_ok for h in res.health.values()) and res.health:
                # Restarted once its failures were forgotten (a leader with no peer to
                # hand over to): healthy again, so it keeps the service when the peer
                # becomes eligible, as Pacemaker keeps a resource running where it is.
                log.info("every resource is healthy again: %s", res.sentence)
                self.healthy = True
        except Exception:
            log.exception("monitoring failed")
        finally:
            self._monitor_task = None

    def _take_cleanup(self) -> None:
        """Act on a new ``tandem cleanup`` of this node: forget the failures (the
        node's and its resources'), healthy again; the monitor finds any fault
        still there. A request older than this agent is history, not an order."""
        rev = self.view.cleanup_revision(self.node)
        if self._cleanup_seen is None:  # the first view: what is there already is history
            self._cleanup_seen = rev
        if rev <= self._cleanup_seen:
            return
        self._cleanup_seen = rev
        n = self.penalty.clear()
        self.group.failures.reset()
        self.healthy = True
        log.warning("operator cleanup: %d node failure(s) and every resource failure count forgotten", n)
        lab_event("cleanup", node=self.node, failures=n)

    def _failed(self, why: str) -> None:
        """This node's resources failed: out of the race for the key for a while."""
        self.healthy = False
        out = self.penalty.record(time.monotonic(), why)
        if self.penalty.failures > 1:
            log.warning("failure %d in a row: not eligible for leadership for %g s",
                        self.penalty.failures, out)
        lab_event("penalty", node=self.node, failures=self.penalty.failures, seconds=out)

    async def _cancel_monitor(self) -> None:
        """Before the group stops: a monitor or recovery in flight holds the group's
        lock and would make the stop wait for it."""
        task = self._monitor_task
        if task is not None:
            with contextlib.suppress(BaseException):
                await _cancel(task, 2.0)
        self._monitor_task = None

    async def _stop_group(self, why: str, graceful: bool) -> bool:
        """True if every member stopped."""
        t0 = time.monotonic()
        await self._cancel_monitor()
        if graceful:
            # MariaDB first, while the VIP still carries its connection closes to the
            # clients (they reconnect at once instead of waiting for a timeout).
            with contextlib.suppress(KeyError):
                await self.group.member("mariadb").stop()
        res = await self.group.stop()
        self.primary = False
        lab_event("demoted", node=self.node, graceful=graceful, ok=res.ok,
                  seconds=round(time.monotonic() - t0, 4))
        log.info("resource group stopped (%s): %s", why, res.sentence)
        return res.ok

    async def _vip_gone_before_release(self) -> None:
        """A released key is free at once, and the next holder (a switchover: without a
        grace) adds the DB VIP at once: if ours could not be removed, wait until its
        kernel lifetime has run out (nothing refreshes it once stopped)."""
        with contextlib.suppress(KeyError):
            vip = self.group.member("db-vip")
            if isinstance(vip, Vip) and vip.removal_failed:
                wait = vip_lifetime(self.cfg.etcd.lease_ttl) + 2 * VIP_REFRESH_SLACK
                log.error("the DB VIP could not be removed: releasing the leader key only after its"
                          " lifetime, in %.2f s", wait)
                await asyncio.sleep(wait)

    def _hold_vip(self, grace: float) -> None:
        with contextlib.suppress(KeyError):
            vip = self.group.member("db-vip")
            if isinstance(vip, Vip):
                vip.hold_until = time.monotonic() + grace

    async def _drop_vip(self) -> None:
        with contextlib.suppress(KeyError):
            r = await self.group.member("db-vip").stop()
            if not r.ok:
                log.error("demotion: the DB VIP did not go: %s", r)

    async def _demote(self, why: str, volume_demoted: bool = False) -> None:
        """At once: the volume stops completing writes, and the DB VIP goes, before
        anything else (neither waits for the other: a paused volume daemon must not
        keep the address up while another node takes over)."""
        lab_event("demote_start", node=self.node, reason=why)
        if self._monitor_task is not None:
            # A recovery in flight would restart what this stops (asked to stop now;
            # _stop_group waits for it to end).
            self._monitor_task.cancel()
        if not volume_demoted:
            await self._demote_volume(why)
        await self._stop_group(why, graceful=False)
        if self.leader is not None:
            await self._vip_gone_before_release()
            with contextlib.suppress(DCSError):
                await self._bounded(self.dcs.release_leader(self.leader), "release leader")
            self.leader = None

    async def _demote_volume(self, why: str) -> None:
        """The volume Secondary by force (held writes fail with EIO) and the DB VIP
        gone, concurrently: the first half of a demotion, which waits for nothing."""

        async def suspend() -> None:
            with contextlib.suppress(TandemError):
                await volume_call(self.spec.control_socket, "suspend-io", timeout=1.0, reason=why)
            with contextlib.suppress(TandemError):  # for after_split_brain = least-recent-primary
                await volume_call(self.spec.control_socket, "lost-leadership", timeout=1.0)

        await asyncio.gather(suspend(), self._drop_vip())
        with contextlib.suppress(TandemError):
            await volume_call(self.spec.control_socket, "secondary", timeout=5.0, force=True)
        with contextlib.suppress(TandemError, KeyError, TypeError):
            st = await volume_call(self.spec.control_socket, "status", timeout=1.0)
            peer = st["peer"]
            if peer["connection"] == "StandAlone" and "split brain" in peer.get("standalone_reason", ""):
                # A split brain refused while we were still Primary: ask again, now
                # that the handshake carries "lost leadership" (after_split_brain).
                await volume_call(self.spec.control_socket, "connect", timeout=2.0)

    async def _step_down(self, d: Decision) -> None:
        await self._stop_group(d.reason, graceful=True)
        if self.leader is not None:
            await self._vip_gone_before_release()
            lab_event("leader_released", node=self.node, target=d.target)
            with contextlib.suppress(DCSError):
                await self._bounded(self.dcs.release_leader(self.leader), "release leader")
            self.leader = None
        if d.clear_switchover:
            with contextlib.suppress(DCSError):
                await self._bounded(self.dcs.clear_switchover(), "clear switchover")

    async def _shutdown(self) -> None:
        if self._fence_task is not None:
            self._fence_task.cancel()
            with contextlib.suppress(BaseException):
                await self._fence_task
        if self.clones is not None:
            with contextlib.suppress(Exception):
                await self.clones.shutdown(self)
        if self.primary:
            deadline = self.key_deadline()
            if deadline is None or deadline - self.margin <= time.monotonic():
                # No lease to stop cleanly under: the volume already holds the I/O that
                # a clean MariaDB shutdown would wait on. Demote by force, at once.
                await self._demote("agent shutting down without a lease")
            else:
                await self._step_down(Decision(Action.STEP_DOWN, "agent shutting down"))
        await self.notifier.drain()
