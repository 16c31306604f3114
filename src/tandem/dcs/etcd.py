"""The DCS contract on etcd v3 (aetcd 1.0 over gRPC; checked against etcd 3.4).

How the contract maps onto etcd:

- view: one linearizable range read of the cluster prefix (one revision);
- leader key: a transaction ``create_revision(leader) == 0`` (absent) plus the
  eligibility re-checks, putting the key on the node's lease; the fencing
  token is the key's create_revision, which only changes when the key is
  created anew;
- fenced writes: ``create_revision(leader) == token and value(leader) == ours``
  in the same transaction as the write;
- lease: one per session, kept alive with LeaseKeepAlive (TTL 0 back means the
  lease is gone);
- time bound: every call runs under ``asyncio.wait_for(op_timeout)`` and a gRPC
  deadline; on a timeout or a connection error the channel is dropped and the
  next call dials the next endpoint (a fresh channel: no gRPC reconnect
  backoff, no half-open TCP connection left behind). A call is never retried
  inside its time budget: a guarded write that timed out may have been applied,
  and only the caller's next view can tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.utils
import aetcd.watcher
import grpc
from aetcd import transactions as tx

from tandem.dcs.base import DCS, Change, DCSError, Renewal, monotonic
from tandem.dcs.keys import HISTORY_LIMIT, Keys, RawKV, decode, encode, view_from_kvs
from tandem.dcs.pki import HostTls
from tandem.dcs.view import ClusterView, Fence, HistoryEntry, Leader, Member, Switchover, VolumeState

T = TypeVar("T")

#: gRPC channel options: reconnect quickly after a partition heals.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 500,
}
_CONNECTIVITY = (asyncio.TimeoutError, aetcd.exceptions.ConnectionFailedError,
                 aetcd.exceptions.ConnectionTimeoutError, OSError)


class _TlsClient(aetcd.Client):
    """aetcd's client over a TLS channel that presents this host's certificate
    (aetcd 1.0 dials only plain channels). The stubs are aetcd's own."""

    def __init__(self, *args, credentials: grpc.ChannelCredentials, **kw):
        super().__init__(*args, **kw)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self.channel = aetcd.rpc.secure_channel(f"{self._host}:{self._port}", self._credentials,
                                                options=self._options.items())
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(aetcd.rpc.WatchStub(self.channel), timeout=self._timeout,
                                              metadata=self.metadata)
        self._connected.set()


def tls_credentials(tls: HostTls) -> grpc.ChannelCredentials:
    ca, key, cert = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class EtcdDCS(DCS):
    """One node's session with etcd.

    endpoints: ``host:port`` of the members, the local one first (it is used
    while it answers). ttl: the lease TTL in whole seconds (etcd's floor is 1 s
    with tandem's etcd timing). op_timeout: the bound on every call; keep it
    well under the TTL so a leader always gets an answer or an error in time to
    demote.
    """

    def __init__(self, cluster: str, node: str, endpoints: Sequence[str], *, ttl: int = 1,
                 op_timeout: float = 0.5, tls: HostTls | None = None):
        super().__init__(cluster, node, ttl)
        #: mutual TLS (`tls`: this host's files, see tandem.dcs.pki), read once here
        self._credentials = tls_credentials(tls) if tls is not None else None
        if not endpoints:
            raise ValueError("EtcdDCS needs at least one endpoint")
        self.keys = Keys(cluster)
        self.endpoints = list(endpoints)
        self.op_timeout = op_timeout
        self._current = 0
        self._client: aetcd.Client | None = None
        self._lease_id: int | None = None
        #: one grant at a time: a renewal and an acquire that both found no lease
        #: granted two, and the key could go on the one not renewed after
        self._grant_lock = asyncio.Lock()

    # --- plumbing ----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    @property
    def lease_id(self) -> int | None:
        return self._lease_id

    def _new_client(self, endpoint: str, timeout: float | None) -> aetcd.Client:
        host, _, port = endpoint.rpartition(":")
        if self._credentials is not None:
            return _TlsClient(host=host, port=int(port), timeout=timeout,  # type: ignore[arg-type]
                              options=dict(_CHANNEL_OPTIONS), credentials=self._credentials)
        return aetcd.Client(host=host, port=int(port), timeout=timeout,  # type: ignore[arg-type]
                            options=dict(_CHANNEL_OPTIONS))

    async def _drop_client(self, failed: aetcd.Client | None = None) -> None:
        """Forget the current channel and move to the next endpoint. The old
        channel is closed in the background: a gRPC close can ignore
        cancellation for a long time, and no caller may wait for it.

        `failed`: the channel the failed call used. If it is no longer the current
        one, it was dropped already and the current one is a fresh channel to the
        next member: a late failure on the old one must not drop it (nor cancel the
        calls in flight on it), nor move on again. Three calls timing out one after
        the other on a hung member moved the index past both healthy members and
        back to the hung one (review 23)."""
        if failed is not None and failed is not self._client:
            return
        client, self._client = self._client, None
        self._current = (self._current + 1) % len(self.endpoints)
        if client is not None:
            closing = asyncio.ensure_future(client.close())
            closing.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _call(self, what: str, fn: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run one etcd request within op_timeout; map every failure to DCSError."""
        if self._client is None:
            self._client = self._new_client(self.endpoint, self.op_timeout)
        endpoint, client = self.endpoint, self._client
        try:
            return await asyncio.wait_for(fn(client), self.op_timeout)
        except _CONNECTIVITY as e:
            await self._drop_client(client)
            raise DCSError(f"etcd {endpoint}: {what} failed: {_reason(e)}") from e
        except aetcd.exceptions.ClientError as e:
            raise DCSError(f"etcd {endpoint}: {what} refused: {_reason(e)}") from e
        except Exception as e:  # gRPC surfaces some failures raw: the contract says DCSError
            await self._drop_client(client)
            raise DCSError(f"etcd {endpoint}: {what} failed: {type(e).__name__}: {_reason(e)}") from e
        except asyncio.CancelledError:
            # gRPC cancels calls whose channel was closed (by another caller's
            # timeout); only a cancellation of *this* task may propagate as such.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            await self._drop_client(client)
            raise DCSError(f"etcd {endpoint}: {what} failed: call cancelled (channel closed)") from None

    async def bounded(self, coro, what: str, limit: float | None = None, calls: int = 1):
        """Await a DCS call of `calls` round trips for at most op_timeout each + 0.2 s
        (or `limit`), whatever it does: asyncio's wait_for waits for a cancelled gRPC
        call to unwind, which can take long. Past the bound the call is abandoned (it
        unwinds in the background) and its channel dropped."""
        channel = self._client  # None: the call opens one (then it is the current one)
        task = asyncio.ensure_future(coro)
        timeout = calls * self.op_timeout + 0.2
        if limit is not None:
            timeout = max(0.01, min(timeout, limit))
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:  # the caller's cancel: the call must not land later
            task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise
        if task in done:
            if task.cancelled():
                raise DCSError(f"etcd: {what} was cancelled (channel closed)")
            return task.result()
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await self._drop_client(channel)
        raise DCSError(f"etcd: {what} did not return within {timeout:.2f} s")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)

    # --- reading -----------------------------------------------------------------
    async def load(self) -> ClusterView:
        rng = await self._call("read", lambda c: c.get_prefix(self.keys.prefix.encode()))
        kvs = [RawKV(kv.key.decode(errors="replace"), kv.value, kv.create_revision, kv.mod_revision, kv.lease)
               for kv in rng.kvs]
        return view_from_kvs(self.keys, rng.header.revision, kvs)

    async def watch(self, start_revision: int | None = None) -> AsyncIterator[Change]:
        # A client of its own: dropping the request channel after a timeout must
        # not kill the stream, and the stream has no time bound.
        client = self._new_client(self.endpoint, self.op_timeout)
        prefix = self.keys.prefix
        try:
            try:
                stream = await asyncio.wait_for(
                    client.watch_prefix(prefix.encode(), start_revision=start_revision), self.op_timeout)
            except (*_CONNECTIVITY, aetcd.exceptions.ClientError) as e:
                raise DCSError(f"etcd {self.endpoint}: watch failed: {_reason(e)}") from e
            try:
                async for ev in stream:
                    yield Change(key=ev.kv.key.decode(errors="replace")[len(prefix):],
                                 deleted=ev.kind == aetcd.EventKind.DELETE, revision=ev.kv.mod_revision)
            except (*_CONNECTIVITY, aetcd.exceptions.ClientError) as e:
                raise DCSError(f"etcd {self.endpoint}: watch broke: {_reason(e)}") from e
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(stream.cancel(), 0.2)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 0.5)

    # --- lease -------------------------------------------------------------------
    async def _lease(self) -> int:
        await self._grant()
        assert self._lease_id is not None
        return self._lease_id

    async def _grant(self) -> Renewal | None:
        """Grant a lease if none is held; its Renewal, or None when one was held.
        A caller that waited for another's grant gets that grant's Renewal: it is as
        fresh as a keepalive, and a keepalive after the wait could overrun the
        caller's bound.

        The wait for another grant is bounded: one abandoned by its caller (the agent
        cancels a call at its bound) can take long to unwind gRPC's cancel, and every
        renewal and acquire would queue behind it unbounded."""
        if self._lease_id is not None:
            return None
        try:
            await asyncio.wait_for(self._grant_lock.acquire(), self.op_timeout)
        except TimeoutError:
            raise DCSError(f"etcd {self.endpoint}: lease grant: an earlier grant has not ended"
                           f" within {self.op_timeout:g} s") from None
        try:
            if self._lease_id is not None:
                granted = self.granted
                return granted if granted is not None and granted.lease == self._lease_id else None
            sent = monotonic()
            lease = await self._call("lease grant", lambda c: c.lease(self.ttl))
            self._lease_id = lease.id
            self.granted = Renewal(float(lease.ttl), sent + lease.ttl, lease.id)
            return self.granted
        finally:
            self._grant_lock.release()

    async def renew_lease(self) -> Renewal:
        granted = await self._grant()
        if granted is not None:
            return granted
        sent = monotonic()
        lease_id = self._lease_id
        assert lease_id is not None
        reply = await self._call("lease keepalive", lambda c: c.refresh_lease(lease_id))
        ttl = float(reply.TTL) if reply is not None else 0.0
        if ttl <= 0 and self._lease_id == lease_id:
            self._lease_id = None
        return Renewal(ttl, sent + ttl, lease_id)

    # --- transactions ------------------------------------------------------------
    async def _txn(self, what: str, compare: list, success: list, failure: list | None = None
                   ) -> tuple[bool, list, int]:
        """Run a transaction; returns (succeeded, responses, revision after it)."""
        async def run(c: aetcd.Client) -> tuple[bool, list, int]:
            req = aetcd.rpc.TxnRequest(compare=[x.build_message() for x in compare],
                                       success=c._ops_to_requests(success),
                                       failure=c._ops_to_requests(failure or []))
            resp = await c.kvstub.Txn(req, timeout=self.op_timeout, metadata=c.metadata)
            return resp.succeeded, list(resp.responses), resp.header.revision

        async def connected(c: aetcd.Client) -> tuple[bool, list, int]:
            await c.connect()
            try:
                return await run(c)
            except aetcd.rpc.AioRpcError as e:
                aetcd.exceptions._handle_exception(e)
                raise

        return await self._call(what, connected)

    def _fenced(self, leader: Leader) -> list:
        """Compares that hold only while `leader` still holds the leader key."""
        key = self.keys.leader.encode()
        return [tx.Create(key) == leader.revision, tx.Value(key) == encode(leader.to_value())]

    def _eligible_as_in(self, view: ClusterView) -> list:
        """Compares that hold only while the facts the caller's eligibility was
        decided from are unchanged: epoch, volume records, maintenance, standby."""
        vol = self.keys.volumes.encode()
        return [
            tx.Mod(self.keys.epoch.encode()) == view.epoch_revision,
            tx.Mod(vol, aetcd.utils.prefix_range_end(vol)) < view.revision + 1,
            tx.Create(self.keys.maintenance.encode()) == 0,
            tx.Create(self.keys.standby(self.node).encode()) == 0,
        ]

    # --- leadership --------------------------------------------------------------
    async def _on_live_lease(self, op: Callable[[int], Awaitable[T]]) -> T:
        """`op(lease)` on our lease; if etcd dropped it before the lease loop noticed
        (a pause), once more on a new one, now rather than at the next cycle."""
        lease = await self._lease()
        try:
            return await op(lease)
        except DCSError as e:
            if "lease not found" not in str(e):
                raise
        if self._lease_id == lease:
            self._lease_id = None
        return await op(await self._lease())

    async def attempt_to_acquire_leader(self, view: ClusterView) -> Leader | None:
        return await self._on_live_lease(lambda lease: self._acquire_on(lease, view))

    async def _acquire_on(self, lease: int, view: ClusterView) -> Leader | None:
        epoch = view.epoch + 1
        value = encode({"node": self.node, "epoch": epoch})
        ok, responses, revision = await self._txn(
            "acquire leader",
            [tx.Create(self.keys.leader.encode()) == 0, *self._eligible_as_in(view)],
            [tx.Put(self.keys.leader.encode(), value, lease=lease),
             tx.Put(self.keys.epoch.encode(), encode({"epoch": epoch}))],
            [tx.Get(self.keys.leader.encode())])
        if ok:
            return Leader(self.node, epoch, revision, lease)
        # A timed-out earlier attempt may have won already: the key is then ours.
        kvs = responses[0].response_range.kvs if responses else []
        if kvs and kvs[0].value == value and kvs[0].lease == lease:
            return Leader(self.node, epoch, kvs[0].create_revision, lease)
        return None

    async def take_over_leader(self, old: Leader, view: ClusterView) -> Leader | None:
        # etcd forbids two operations on one key in a transaction, so delete and
        # create are two steps; between them it is an ordinary race for the key.
        deleted, _, _ = await self._txn("remove fenced leader", self._fenced(old),
                                        [tx.Delete(self.keys.leader.encode())])
        if not deleted:
            return None
        new = await self.attempt_to_acquire_leader(view)
        if new is not None and old.lease:
            # The fenced node's session is over: end its lease so its member key
            # (still saying "primary") goes now instead of at the TTL.
            with contextlib.suppress(DCSError):
                await self._call("revoke fenced lease", lambda c: c.revoke_lease(old.lease))
        return new

    async def record_fence(self, fence: Fence, leader: Leader) -> bool:
        if (fence.node, fence.revision) != (leader.node, leader.revision):
            raise ValueError(f"a fence of {fence.node} (token {fence.revision}) does not describe"
                             f" {leader.node}'s leadership (token {leader.revision})")
        ok, _, _ = await self._txn("record fence", self._fenced(leader),
                                   [tx.Put(self.keys.fence.encode(), encode(fence.to_value()))])
        return ok

    async def lease_silence(self, lease: int) -> float | None:
        info = await self._call("lease info", lambda c: c.get_lease_info(lease, keys=False))
        if info is None or info.TTL < 0:
            return None
        return float(max(0, info.grantedTTL - info.TTL))

    async def release_leader(self, leader: Leader) -> bool:
        ok, _, _ = await self._txn("release leader", self._fenced(leader),
                                   [tx.Delete(self.keys.leader.encode())])
        return ok

    # --- node and volume state ---------------------------------------------------
    async def touch_member(self, member: Member) -> None:
        if member.node != self.node:
            raise ValueError(f"{self.node} may only write its own member key, not {member.node}'s")
        key, value = self.keys.member(member.node).encode(), encode(member.to_value())
        await self._on_live_lease(lambda lease: self._call(
            "touch member", lambda c: c.put(key, value, lease=lease)))

    async def set_volume_state(self, state: VolumeState, leader: Leader) -> bool:
        key = self.keys.volume(state.resource).encode()
        ok, _, _ = await self._txn(f"set volume {state.resource}",
                                   [*self._fenced(leader), tx.Mod(key) == state.revision],
                                   [tx.Put(key, encode(state.to_value()))])
        return ok

    async def clear_volume_fence(self, state: VolumeState, leader: Leader | None) -> bool:
        key = self.keys.volume(state.resource).encode()
        lead = self.keys.leader.encode()
        ok, _, _ = await self._txn(f"unfence volume {state.resource}",
                                   [tx.Mod(key) == state.revision,
                                    tx.Create(lead) == (leader.revision if leader else 0)],
                                   [tx.Put(key, encode(state.to_value()))])
        return ok

    async def append_history(self, entry: HistoryEntry, leader: Leader) -> bool:
        key = self.keys.history.encode()
        got = await self._call("read history", lambda c: c.get(key))
        items = decode(got.value) if got is not None else []
        items = [*(items if isinstance(items, list) else []), entry.to_value()][-HISTORY_LIMIT:]
        ok, _, _ = await self._txn("append history",
                                   [*self._fenced(leader), tx.Mod(key) == (got.mod_revision if got else 0)],
                                   [tx.Put(key, encode(items))])
        return ok

    # --- operator requests -------------------------------------------------------
    async def set_switchover(self, request: Switchover) -> bool:
        key = self.keys.switchover.encode()
        ok, _, _ = await self._txn("set switchover", [tx.Create(key) == 0],
                                   [tx.Put(key, encode(request.to_value()))])
        return ok

    async def clear_switchover(self, expected: Switchover | None = None) -> bool:
        key = self.keys.switchover.encode()
        compare = [tx.Mod(key) == expected.revision] if expected is not None else []
        ok, _, _ = await self._txn("clear switchover", compare, [tx.Delete(key)])
        return ok

    async def set_maintenance(self, on: bool) -> None:
        await self._flag(self.keys.maintenance, on, "maintenance")

    async def set_standby(self, node: str, on: bool) -> None:
        await self._flag(self.keys.standby(node), on, f"standby {node}")

    async def request_cleanup(self, node: str) -> None:
        key, value = self.keys.cleanup(node).encode(), encode({"at": time.time()})
        await self._call(f"request cleanup of {node}", lambda c: c.put(key, value))

    async def _flag(self, key: str, on: bool, what: str) -> None:
        if on:
            await self._call(f"set {what}", lambda c: c.put(key.encode(), encode({})))
        else:
            await self._call(f"clear {what}", lambda c: c.delete(key.encode()))


def _reason(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "no answer within the operation timeout"
    if isinstance(e, aetcd.rpc.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__
