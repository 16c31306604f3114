"""A model of etcd as the DCS contract uses it, and a session that mirrors
``tandem.dcs.etcd.EtcdDCS`` over the simulated network.

The model is linearizable by construction (one process applies every request
at the instant it arrives). Leases expire at grant/keepalive arrival + TTL on
the DCS's own (true) clock; expiry deletes the keys on the lease. A
transaction is one revision; compares are the ones EtcdDCS builds
(create_revision, mod_revision, value, "every key under a prefix has
mod_revision < n"). A put on a lease that no longer exists is refused, as
etcd does ("requested lease not found").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tandem.dcs.base import DCSError, Renewal
from tandem.dcs.keys import HISTORY_LIMIT, Keys, RawKV, decode, encode, view_from_kvs
from tandem.dcs.view import ClusterView, HistoryEntry, Leader, Member, VolumeState
from tandem.sim.kernel import Call, Coro, NodeClock, Refused, Sim
from tandem.volume.states import DiskState


@dataclass(slots=True)
class _KV:
    value: bytes
    create: int
    mod: int
    lease: int


class ModelDCS:
    def __init__(self, sim: Sim, on_change: Callable[[], None],
                 on_put: Callable[[str, bytes], None] | None = None):
        self.sim = sim
        self.on_change = on_change
        self.on_put = on_put
        self.kv: dict[str, _KV] = {}
        self.rev = 1
        self.leases: dict[int, tuple[float, float]] = {}  # id -> (expiry, ttl)
        self._next_lease = 7000
        self._view: tuple[int, ClusterView] | None = None

    # --- dispatch -------------------------------------------------------------------
    def apply(self, op: str, args: tuple):
        return getattr(self, "op_" + op)(*args)

    # --- leases ---------------------------------------------------------------------
    def op_grant(self, ttl: float):
        self._next_lease += 1
        lid = self._next_lease
        self._keep(lid, ttl)
        return lid, ttl

    def op_keepalive(self, lid: int):
        if lid not in self.leases:
            return 0.0
        ttl = self.leases[lid][1]
        self._keep(lid, ttl)
        return ttl

    def _keep(self, lid: int, ttl: float) -> None:
        exp = self.sim.now + ttl
        self.leases[lid] = (exp, ttl)
        self.sim.at(exp, self._maybe_expire, lid)

    def _maybe_expire(self, lid: int) -> None:
        got = self.leases.get(lid)
        if got is None or got[0] > self.sim.now:
            return
        del self.leases[lid]
        gone = [k for k, v in self.kv.items() if v.lease == lid]
        if gone:
            self.rev += 1
            for k in gone:
                del self.kv[k]
            names = ", ".join(k.rsplit("/", 2)[-1] for k in gone)
            self.sim.log("dcs", f"lease {lid} expired: deleted {names}")
            self.on_change()

    # --- reads ----------------------------------------------------------------------
    def op_range(self, prefix: str):
        return self.rev, [RawKV(k, v.value, v.create, v.mod, v.lease)
                          for k, v in sorted(self.kv.items()) if k.startswith(prefix)]

    def op_view(self, keys: Keys):
        """The range read EtcdDCS.load does, decoded by the real view_from_kvs; views are
        immutable, so one per revision is shared by every reader."""
        if self._view is None or self._view[0] != self.rev:
            rev, kvs = self.op_range(keys.prefix)
            self._view = (rev, view_from_kvs(keys, rev, kvs))
        return self._view[1]

    def op_get(self, key: str):
        v = self.kv.get(key)
        return None if v is None else RawKV(key, v.value, v.create, v.mod, v.lease)

    # --- writes ---------------------------------------------------------------------
    def op_put(self, key: str, value: bytes, lease: int = 0):
        if lease and lease not in self.leases:
            return Refused("requested lease not found")
        self.rev += 1
        self._put(key, value, lease)
        self.on_change()
        return self.rev

    def op_delete(self, key: str):
        if key in self.kv:
            self.rev += 1
            del self.kv[key]
            self.on_change()
        return self.rev

    def op_txn(self, compares: tuple, success: tuple, failure: tuple = ()):
        ok = all(self._holds(c) for c in compares)
        ops = success if ok else failure
        for op in ops:
            if op[0] == "put" and op[3] and op[3] not in self.leases:
                return Refused("requested lease not found")
        responses = []
        changed = any(op[0] == "put" or (op[0] == "delete" and op[1] in self.kv) for op in ops)
        if changed:
            self.rev += 1
        for op in ops:
            if op[0] == "put":
                self._put(op[1], op[2], op[3])
            elif op[0] == "delete":
                self.kv.pop(op[1], None)
            elif op[0] == "get":
                responses.append(self.op_get(op[1]))
        if changed:
            self.on_change()
        return ok, responses, self.rev

    def _put(self, key: str, value: bytes, lease: int) -> None:
        old = self.kv.get(key)
        self.kv[key] = _KV(value, old.create if old else self.rev, self.rev, lease)
        if self.on_put is not None:
            self.on_put(key, value)

    def _holds(self, c: tuple) -> bool:
        kind, key, want = c
        if kind == "prefix_mod_lt":
            return all(v.mod < want for k, v in self.kv.items() if k.startswith(key))
        v = self.kv.get(key)
        if kind == "create":
            return (v.create if v else 0) == want
        if kind == "mod":
            return (v.mod if v else 0) == want
        if kind == "value":
            return v is not None and v.value == want
        raise ValueError(kind)

    # --- for the checker and operators (no network) ------------------------------------
    def view(self, keys: Keys) -> ClusterView:
        return self.op_view(keys)


class SimDCS:
    """One process's session with the model DCS; the same operations, compares and
    client-side rules as EtcdDCS (a generator per call: ``yield from dcs.load()``)."""

    def __init__(self, cluster: str, node: str, clock: NodeClock, ttl: float = 1.0, op_timeout: float = 0.5):
        self.keys = Keys(cluster)
        self.node = node
        self.clock = clock
        self.ttl = ttl
        self.op_timeout = op_timeout
        self.lease_id: int | None = None

    def _call(self, op: str, *args) -> Coro:
        return (yield Call(op, args, self.op_timeout))

    def load(self) -> Coro:
        return (yield from self._call("view", self.keys))

    # --- lease --------------------------------------------------------------------
    def _lease(self) -> Coro:
        if self.lease_id is None:
            lid, _ = yield from self._call("grant", self.ttl)
            self.lease_id = lid
        return self.lease_id

    def renew_lease(self) -> Coro:
        sent = self.clock.now()
        if self.lease_id is None:
            lid, ttl = yield from self._call("grant", self.ttl)
            self.lease_id = lid
            return Renewal(float(ttl), sent + ttl, lid)
        lid = self.lease_id
        ttl = yield from self._call("keepalive", lid)
        if ttl <= 0 and self.lease_id == lid:
            self.lease_id = None
        return Renewal(float(ttl), sent + ttl, lid)

    # --- compares (as EtcdDCS._fenced / _eligible_as_in) -----------------------------
    def _fenced(self, leader: Leader) -> list:
        return [("create", self.keys.leader, leader.revision),
                ("value", self.keys.leader, encode(leader.to_value()))]

    def _eligible_as_in(self, view: ClusterView) -> list:
        return [("mod", self.keys.epoch, view.epoch_revision),
                ("prefix_mod_lt", self.keys.volumes, view.revision + 1),
                ("create", self.keys.maintenance, 0),
                ("create", self.keys.standby(self.node), 0)]

    def _txn(self, compares: list, success: list, failure: list | None = None) -> Coro:
        return (yield from self._call("txn", tuple(compares), tuple(success), tuple(failure or ())))

    # --- leadership ---------------------------------------------------------------
    def attempt_to_acquire_leader(self, view: ClusterView) -> Coro:
        lease = yield from self._lease()
        epoch = view.epoch + 1
        value = encode({"node": self.node, "epoch": epoch})
        ok, responses, revision = yield from self._txn(
            [("create", self.keys.leader, 0), *self._eligible_as_in(view)],
            [("put", self.keys.leader, value, lease), ("put", self.keys.epoch, encode({"epoch": epoch}), 0)],
            [("get", self.keys.leader)])
        if ok:
            return Leader(self.node, epoch, revision, lease)
        kv = responses[0] if responses else None
        if kv is not None and kv.value == value and kv.lease == lease:
            return Leader(self.node, epoch, kv.create_revision, lease)
        return None

    def release_leader(self, leader: Leader) -> Coro:
        ok, _, _ = yield from self._txn(self._fenced(leader), [("delete", self.keys.leader)])
        return ok

    # --- node and volume state ----------------------------------------------------
    def touch_member(self, member: Member) -> Coro:
        for attempt in (1, 2):
            lease = yield from self._lease()
            try:
                yield from self._call("put", self.keys.member(member.node), encode(member.to_value()), lease)
                return
            except DCSError as e:
                if attempt == 2 or "lease not found" not in str(e):
                    raise
                self.lease_id = None

    def set_volume_state(self, state: VolumeState, leader: Leader) -> Coro:
        key = self.keys.volume(state.resource)
        ok, _, _ = yield from self._txn([*self._fenced(leader), ("mod", key, state.revision)],
                                        [("put", key, encode(state.to_value()), 0)])
        return ok

    def clear_volume_fence(self, state: VolumeState, leader: Leader | None) -> Coro:
        """As EtcdDCS.clear_volume_fence: compare-and-set on the record and the leader key."""
        key = self.keys.volume(state.resource)
        ok, _, _ = yield from self._txn([("mod", key, state.revision),
                                         ("create", self.keys.leader, leader.revision if leader else 0)],
                                        [("put", key, encode(state.to_value()), 0)])
        return ok

    def mark_peer_outdated(self, resource: str, peer: str, leader: Leader, attempts: int = 3) -> Coro:
        """As DCS.mark_peer_outdated (tandem.dcs.base)."""
        for _ in range(attempts):
            view = yield from self.load()
            if view.leader is None or view.leader.revision != leader.revision:
                return False
            current = view.volume(resource) or VolumeState.empty(resource)
            if (yield from self.set_volume_state(current.with_disk(peer, DiskState.OUTDATED), leader)):
                return True
        return False

    def append_history(self, entry: HistoryEntry, leader: Leader) -> Coro:
        key = self.keys.history
        got = yield from self._call("get", key)
        items = decode(got.value) if got is not None else []
        items = [*(items if isinstance(items, list) else []), entry.to_value()][-HISTORY_LIMIT:]
        ok, _, _ = yield from self._txn([*self._fenced(leader), ("mod", key, got.mod_revision if got else 0)],
                                        [("put", key, encode(items), 0)])
        return ok

    def clear_switchover(self) -> Coro:
        ok, _, _ = yield from self._txn([], [("delete", self.keys.switchover)])
        return ok
