"""The management tier, cloned on every data node: a management server and an
haproxy in front of all of them, plus the API VIP on one node whose haproxy is
healthy (DESIGN: "Cloned on every node: management server, haproxy; the API
VIP goes to a node whose haproxy is healthy").

Why a separate task of the agent, not members of the DB group:

- the clones run on every node whatever its role, so a DB switchover or
  failover never touches them (the management servers ride out the database
  move by retrying; haproxy keeps serving);
- starting a Python management server takes a second or more; in the HA
  cycle that would delay a demotion. :meth:`CloneSet.run` is its own asyncio
  task and shares nothing with the HA loop but the DCS client and the lease
  deadline.

Clone policy (Pacemaker's clone with on-fail=restart and no migration
threshold, since there is nowhere to migrate a clone to): every tick each
member is monitored; an unhealthy member is stopped and started again, with a
back-off that doubles up to :data:`MAX_BACKOFF`. A management server that
cannot reach the database at start exits after its retry budget and is
restarted the same way, so the order in which the cluster comes up does not
matter.

Each start of a management server is a new *incarnation* with its own server
id (``<node>-<n>``): a server that was SIGKILLed is dead for good, and its
unfinished jobs are taken over by a survivor (which may be the next
incarnation on the same node) through the job heartbeat lease in MariaDB.

haproxy (:class:`tandem.cluster.resources.haproxy.Haproxy`, whose module
docstring explains the routing) balances across every node's management
server with HTTP health checks on ``/health`` (200 only while that server
reaches the database), redispatch, and unchecked backups for the moment of a
database switchover when every check fails.

API VIP placement goes through the DCS, with one key ``apivip`` on the
holder's lease (the same lease as its member key), taken with a
create-if-absent transaction:

- a node holds the VIP only while it holds that key, its own haproxy is
  healthy and its lease is valid with the agent's safety margin; otherwise it
  removes the address and deletes the key (if still its own);
- a node without the VIP takes the key when it is free and its haproxy is
  healthy;
- the key is sticky: the VIP stays where it is across DB switchovers and
  failovers (clients' connections to haproxy are not cut when the database
  moves) and moves only when its holder's haproxy fails or the holder dies
  (its lease, and so the key, expires within the TTL).

So at most one node holds the key at a time; a holder that loses its lease
drops the address at its next tick, before the margin runs out (the same
argument as the leader's self-demotion).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aetcd import transactions as tx
from pydantic import Field

from tandem.cluster.dbgroup import vip_lifetime, vip_takeover_grace
from tandem.cluster.resources.base import Health, Resource, ResourceError
from tandem.cluster.resources.config import (
    AbsPath,
    Backend,
    HaproxyConfig,
    Port,
    ResourceBase,
    Seconds,
    VipConfig,
)
from tandem.cluster.resources.haproxy import Haproxy
from tandem.cluster.resources.procs import ProcRef, spawn, tail, terminate
from tandem.cluster.resources.vip import Vip
from tandem.config import Config, db_tls_ca
from tandem.dcs.base import DCSError
from tandem.dcs.keys import decode, encode
from tandem.errors import TandemError

if TYPE_CHECKING:
    from tandem.cluster.agent import Agent

log = logging.getLogger("tandem.clones")

TICK = 0.25  #: seconds between clone monitor ticks
MAX_BACKOFF = 4.0  #: longest wait between restarts of a failing clone


def tandem_exe() -> list[str]:
    exe = Path(sys.executable).parent / "tandem"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tandem.cli.main"]


# ====================================================================== management server
class MgmtServerConfig(ResourceBase):
    kind: Literal["mgmt"] = "mgmt"
    node: str
    run_dir: AbsPath
    listen_address: str
    port: Port = 8081
    db_host: str
    db_port: Port = 3306
    db_name: str
    db_user: str
    db_ssl_ca: AbsPath | None = None  #: TLS to the database, checked against this CA
    password_file: AbsPath
    key_file: AbsPath  #: seals API secret keys in the database (the cluster secret file)
    simhost: str
    dead_after: Seconds = 3.0
    require_expires: bool = False
    max_expires_ahead: float = Field(default=3600.0, ge=1, le=7 * 86400)  #: as [mgmt] allows
    db_retry: Seconds = 8.0
    start_grace: Seconds = 30.0  #: monitor says "starting" this long before it wants the port
    start_timeout: Seconds = 10.0
    stop_timeout: Seconds = 10.0
    monitor_timeout: Seconds = 3.0


class MgmtServer(Resource):
    """`tandem mgmt serve` as a daemon known by pid + start time."""

    kind = "mgmt"
    config: MgmtServerConfig

    @property
    def log_path(self) -> Path:
        return self.private_dir / "mgmt.log"

    def ref(self) -> ProcRef | None:
        st = self.load_state()
        return ProcRef.from_json(st) if st and "pid" in st else None

    def server_id(self) -> str | None:
        st = self.load_state()
        return st.get("server_id") if st else None

    def _ensure_database(self) -> None:
        """Create the database if missing (best effort: the DB may not be up yet)."""
        import pymysql

        from tandem.mgmt.db import transport

        c = self.config
        try:
            conn = pymysql.connect(host=c.db_host, port=c.db_port, user=c.db_user,
                                   password=c.password_file.read_text().strip(), connect_timeout=1,
                                   read_timeout=3, write_timeout=3,
                                   **transport(str(c.db_ssl_ca) if c.db_ssl_ca else None))
        except (pymysql.err.MySQLError, OSError, TandemError):
            return
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{c.db_name}`")
        except pymysql.err.MySQLError:
            pass
        finally:
            conn.close()

    async def _start(self) -> str:
        from tandem.mgmt.db import DbUrl
        ref = self.ref()
        if ref is not None and ref.alive():
            return f"already running (pid {ref.pid})"
        c = self.config
        await asyncio.get_running_loop().run_in_executor(None, self._ensure_database)
        st = self.load_state() or {}
        incarnation = int(st.get("incarnation", 0)) + 1
        server_id = f"{c.node}-{incarnation}"
        argv = [*tandem_exe(), "mgmt", "serve",
                "--db", DbUrl(host=c.db_host, port=c.db_port, user=c.db_user, database=c.db_name,
                              ssl_ca=str(c.db_ssl_ca) if c.db_ssl_ca else None).safe(),
                "--db-password-file", str(c.password_file), "--key-file", str(c.key_file),
                "--listen", f"{c.listen_address}:{c.port}", "--server-id", server_id,
                "--simhost", c.simhost, "--dead-after", str(c.dead_after), "--db-retry", str(c.db_retry),
                "--max-expires-ahead", str(c.max_expires_ahead),
                *(["--require-expires"] if c.require_expires else [])]
        ref = spawn(argv, self.log_path)
        self.save_state({**ref.to_json(), "incarnation": incarnation, "server_id": server_id,
                         "started": time.monotonic()})
        return f"management server {server_id} pid {ref.pid} starting on {c.listen_address}:{c.port}"

    async def _stop(self) -> str:
        ref = self.ref()
        if ref is None:
            return "was not running"
        how = await terminate(ref, max(1.0, self.config.stop_timeout - 5), signal.SIGTERM)
        if ref.alive():
            raise ResourceError(f"management server pid {ref.pid} {how}")
        st = self.load_state() or {}
        self.save_state({"incarnation": st.get("incarnation", 0)})  # keep counting incarnations
        return f"management server pid {ref.pid} {how}"

    async def _monitor(self) -> Health:
        ref = self.ref()
        st = self.load_state() or {}
        if ref is None:
            return Health.stopped("not started")
        if not ref.alive():
            return Health.failed(f"management server pid {ref.pid} is gone: {tail(self.log_path, 1)[-200:]}")
        c = self.config
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(c.listen_address, c.port), 1.0)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return Health.ok(f"{st.get('server_id')} pid {ref.pid} listening on {c.listen_address}:{c.port}")
        except (OSError, TimeoutError):
            age = time.monotonic() - float(st.get("started", 0))
            if age < c.start_grace:
                return Health.ok(f"{st.get('server_id')} pid {ref.pid} starting ({age:.0f} s)")
            return Health.failed(f"pid {ref.pid} does not listen on {c.listen_address}:{c.port}")


# ====================================================================== the clone set
class CloneSet:
    """haproxy and the management server on this node, and the API VIP."""

    def __init__(self, cfg: Config, node: str, run_dir: Path):
        m = cfg.mgmt
        db = cfg.database
        assert m is not None and db is not None and db.vip is not None and db.password_file is not None
        self.node = node
        self.address = str(cfg.nodes[node].public_address)
        self.port = m.port
        rd = (run_dir / "clones").resolve()
        rd.mkdir(parents=True, exist_ok=True)
        ca = db_tls_ca(cfg)
        self.haproxy = Haproxy(HaproxyConfig(
            name="haproxy", run_dir=rd, port=m.port, check_interval_ms=300, fall=2, rise=1,
            retries=3, connect_timeout_ms=1000, server_timeout_ms=60000, monitor_timeout=2,
            backends=[Backend(name=n, address=str(nd.public_address), port=m.server_port)
                      for n, nd in sorted(cfg.nodes.items())]))
        self.mgmt = MgmtServer(MgmtServerConfig(
            name="mgmt", node=node, run_dir=rd, listen_address=self.address, port=m.server_port,
            db_host=str(db.vip.address.ip), db_port=db.port, db_name=m.db_name,
            db_user=m.db_user or db.user, db_ssl_ca=ca.resolve() if ca else None,
            password_file=db.password_file.resolve(),
            key_file=cfg.cluster.secret.file.resolve(),
            simhost=m.simhost, dead_after=m.dead_after, db_retry=m.db_retry,
            require_expires=m.require_expires, max_expires_ahead=m.max_expires_ahead))
        self.members: list[Resource] = [self.haproxy, self.mgmt]
        self.vip: Vip | None = None
        self.grace = vip_takeover_grace(cfg.etcd.lease_ttl)
        if m.api_vip is not None:
            self.vip = Vip(VipConfig(name="api-vip", address=m.api_vip.address,
                                     interface="pub0" if m.api_vip.network == "public" else "rep0",
                                     arp_count=1, run_dir=rd, lifetime=vip_lifetime(cfg.etcd.lease_ttl)))
        self.health: dict[str, Health] = {}
        #: when the tick in progress began, or its last step; None between ticks
        self.busy_since: float | None = None
        #: a tick with no step for this long is hung (see :meth:`stalled`): 20 s above
        #: its longest step, a member's start, stop or monitor, or the claim of the API
        #: VIP's key (at most 4 DCS round trips, see EtcdDCS.bounded)
        ops = [*self.members, *([self.vip] if self.vip is not None else [])]
        self.stall_after = 20.0 + max(4 * cfg.etcd.op_timeout + 1, *(
            max(m.config.start_timeout, m.config.stop_timeout, m.config.monitor_timeout)
            for m in ops))
        self._stall_logged = False
        #: the agent is stopping (see :meth:`shutdown`): no tick claims the API VIP's key or
        #: starts the address again, not even a hung one that wakes up after the release
        self.closing = False
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self.haproxy_ok = False
        self.holding = False  #: the API VIP is on this node (as far as we did it)
        self._vip_checked = 0.0
        self._had_key = False
        self._key_revision = 0  #: create_revision of the `apivip` key when we took it
        self._published: tuple[bytes, int] | None = None

    # --- what the agent publishes ---------------------------------------------------
    def api_url(self) -> str:
        """This node's API address while its haproxy is healthy, else empty."""
        return f"http://{self.address}:{self.port}/client/api" if self.haproxy_ok else ""

    def summary(self) -> dict[str, Any]:
        return {name: str(h) for name, h in self.health.items()} | {"api_vip": self.holding}

    def published(self) -> dict[str, Any]:
        """What `tandem status` shows of this node's clones: states, the server id,
        and a reason only when not running (stable while healthy, so it is written
        only on changes). No secrets: the reasons are monitor sentences."""
        out: dict[str, Any] = {}
        for m in self.members:
            h = self.health.get(m.name)
            if h is None:
                out[m.name] = {"state": "unknown"}
                continue
            state = {"ok": "running", "failed": "failed", "stopped": "stopped"}[h.state.value]
            if state == "running" and "starting" in h.reason:
                state = "starting"
            quiet = state in ("running", "starting")
            out[m.name] = {"state": state} | ({} if quiet else {"detail": h.reason[:200]})
        sid = self.mgmt.server_id()
        if sid:
            out["mgmt"]["server_id"] = sid
        out["api_vip"] = self.holding
        return out

    # --- the task -------------------------------------------------------------------
    async def run(self, agent: Agent) -> None:
        while not agent.stopping:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise asyncio.CancelledError  # a tick swallowed the cancel: end as asked
            t0 = self.busy_since = time.monotonic()
            try:
                await self.tick(agent)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:  # this task must not die
                log.exception("clone tick failed")
            finally:
                self.busy_since = None
            await asyncio.sleep(max(0.05, TICK - (time.monotonic() - t0)))

    async def supervise(self, agent: Agent, check_every: float = 1.0) -> None:
        """Run :meth:`run` and start it again when its tick hangs. Every step of a tick
        is bounded (members' operations by their timeouts, DCS calls by
        :meth:`EtcdDCS.bounded`), so a hung tick is a bug or an await that never
        unwinds. A task that does not end when cancelled is waited for (and cancelled
        again), never run twice beside itself: two ticks would race on the VIP."""
        from tandem.cluster.agent import _dump_tasks, lab_event
        while not agent.stopping:
            task = asyncio.create_task(self.run(agent), name="clones")
            ending = False  # _end began: it has its grace, even under our own cancel
            try:
                while not task.done() and not self.stalled(time.monotonic()):
                    await asyncio.wait({task}, timeout=check_every)
                if not task.done():
                    log.error("the clones' tick has made no step for %.1f s (over %g s): restarting"
                              " the task; tasks follow", time.monotonic() - (self.busy_since or 0),
                              self.stall_after)
                    lab_event("clones_stalled", node=self.node)
                    _dump_tasks()
                    task.cancel()
                    while not task.done() and not agent.stopping:
                        await asyncio.wait({task}, timeout=10 * check_every)
                        if not task.done():
                            log.error("the hung clones' task has not ended since its cancel;"
                                      " cancelling it again")
                            task.cancel()
                    if task.done():  # the next tick sees the VIP afresh: start it, or check it gone
                        self.holding, self._vip_checked = False, 0.0
                if not task.done():  # the agent stops while the task hangs
                    ending = True
                    await self._end(task)
                    return
            except BaseException:  # our own cancel: the task's too, with a moment to unwind
                if not ending:
                    await self._end(task)
                raise
            if not task.cancelled() and task.exception() is not None:
                log.error("the clones' task ended: %r", task.exception())
            await asyncio.sleep(TICK)

    @staticmethod
    async def _end(task: asyncio.Task) -> None:
        """Cancel `task` and give it 5 s, all of them even if we are cancelled meanwhile
        (the agent's stop cancels the supervisor while it waits here)."""
        task.cancel()
        waited = asyncio.ensure_future(asyncio.wait({task}, timeout=5.0))
        cancelled = False
        while not waited.done():
            try:
                await asyncio.shield(waited)
            except asyncio.CancelledError:
                cancelled = True
        if not task.done():  # its tick's busy_since stays set: the API VIP is not extended
            log.error("the clones' task has not ended 5 s after its cancel")
        if cancelled:
            raise asyncio.CancelledError

    def _step(self) -> None:
        """A step of the tick begins: each is bounded by its own timeout."""
        if self.busy_since is not None:
            self.busy_since = time.monotonic()

    def stalled(self, now: float) -> bool:
        """True while a tick has gone `stall_after` without a step: it is hung (the HA
        cycle's guard, for the clones). Its API VIP is then no longer extended, so the
        address leaves this node within its kernel lifetime although the lease lives
        on, and the agent restarts the task (:meth:`supervise`)."""
        since = self.busy_since
        return since is not None and now - since > self.stall_after

    async def tick(self, agent: Agent) -> None:
        if self.vip is not None and self.holding and not (agent.lease_left() or 0) > 0:
            # First, not after the members' restarts (seconds: torture 75:85 kept the
            # API VIP for 1.1 s after a lapse while the management server restarted).
            await self._drop(agent, "no valid lease", release=False)
        healths = await asyncio.gather(*(m.monitor() for m in self.members))
        for m, h in zip(self.members, healths, strict=True):
            self.health[m.name] = h
            if h.is_ok:
                if self._backoff.get(m.name):
                    self._backoff[m.name] = 0.0
                continue
            now = time.monotonic()
            if now < self._retry_at.get(m.name, 0.0):
                continue
            backoff = min(MAX_BACKOFF, max(0.5, 2 * self._backoff.get(m.name, 0.0)))
            self._backoff[m.name] = backoff
            self._retry_at[m.name] = now + backoff
            if h.state.value == "failed":
                log.warning("clone %s unhealthy (%s): restarting", m.name, h.reason)
                self._step()
                await m.stop()
            self._step()
            r = await m.start()
            (log.info if r.ok else log.error)("clone %s", r)
        self.haproxy_ok = self.health.get("haproxy") is not None and self.health["haproxy"].is_ok
        if self.vip is not None:
            self._step()
            await self._place_vip(agent)
        try:
            self._step()
            await self._publish(agent)
        except DCSError as e:
            log.debug("publishing the clones' state: %s", e)

    async def _publish(self, agent: Agent) -> None:
        """``clones/<node>`` on our lease, when it changed (or the lease did)."""
        value = encode(self.published())
        lease = await agent.dcs.bounded(agent.dcs._lease(), "lease for the clones' state", calls=2)
        if self._published == (value, lease):
            return
        key = (agent.dcs.keys.prefix + "clones/" + self.node).encode()
        await agent.dcs.bounded(agent.dcs._txn("publish clones", [], [tx.Put(key, value, lease=lease)]),
                             "publish clones")
        self._published = (value, lease)

    # --- the API VIP ----------------------------------------------------------------
    def _key(self, agent: Agent) -> bytes:
        return (agent.dcs.keys.prefix + "apivip").encode()

    async def refresh_vip(self, valid_until: float | None = None, lease_id: int | None = None) -> None:
        """Called by the agent on every lease renewal: keeps the API VIP's kernel lifetime
        (see :meth:`Vip.refresh` for `valid_until` and `lease_id`)."""
        if self.vip is None or not self.holding:
            return
        if self.stalled(time.monotonic()):
            if not self._stall_logged:
                self._stall_logged = True
                log.error("the clones' tick has been stuck for over %g s: the API VIP's lifetime"
                          " is no longer extended", self.stall_after)
            self.vip.let_lapse("the clones' tick is stuck")
            return
        self._stall_logged = False
        if not await self.vip.refresh(valid_until, lease_id):
            log.warning("could not refresh the lifetime of the API VIP")

    async def _place_vip(self, agent: Agent) -> None:
        assert self.vip is not None
        lease_ok = (agent.lease_left() or 0) > 0
        if not (lease_ok and self.haproxy_ok):
            why = "haproxy unhealthy" if lease_ok else "no valid lease"
            await self._drop(agent, why, release=lease_ok)
            return
        try:
            mine = await self._claim(agent)
        except DCSError as e:
            log.warning("API VIP: DCS: %s", e)
            return  # keep what we have: the lease check above bounds how long
        self._step()
        if self.closing:  # the agent began to stop meanwhile: its shutdown has the VIP
            return
        if mine:
            # (not extending: a stall let it lapse; a start puts it up on the lease anew)
            if not self.holding or not self.vip.extending or not (await self.vip.monitor()).is_ok:
                self._step()
                if self.closing:
                    return
                # The start asks the lease again (Vip.lease): the claim and the monitor
                # may have taken its whole life (a paused agent, torture 72:163).
                r = await self.vip.start()  # (refused once closing: see Agent's vip.lease)
                self.holding = r.ok and not self.closing
                (log.info if r.ok else log.error)("API VIP: %s", r)
                from tandem.cluster.agent import lab_event
                lab_event("api_vip", node=self.node, op="start", ok=r.ok)
        else:
            await self._drop(agent, "another node holds the API VIP key", release=False)

    async def _claim(self, agent: Agent) -> bool:
        """Hold (or take, if free) the `apivip` key on our lease; True if ours."""
        if self.closing:
            return False
        key = self._key(agent)
        lease = await agent.dcs.bounded(agent.dcs._lease(), "lease for the API VIP key", calls=2)
        if self.closing:  # (again: the agent's stop may have released the key meanwhile)
            return False
        value = encode({"node": self.node})
        ok, responses, revision = await agent.dcs.bounded(agent.dcs._txn(
            "claim API VIP", [tx.Create(key) == 0], [tx.Put(key, value, lease=lease)], [tx.Get(key)]),
            "claim API VIP")
        if ok:
            self._took_key(revision, "took the key")
            return True
        kvs = responses[0].response_range.kvs if responses else []
        if not kvs:
            return False
        holder = decode(kvs[0].value)
        if isinstance(holder, dict) and holder.get("node") == self.node:
            if kvs[0].lease == lease:
                if kvs[0].create_revision != self._key_revision:
                    # Torture 103:9: a claim whose call timed out (etcd electing a leader)
                    # was applied after all, once the old holder's lease ended: the key is
                    # ours, but nobody waited the grace for the old holder's address.
                    self._took_key(kvs[0].create_revision,
                                   "took the key (by an earlier claim that timed out)")
                self._had_key = True
                return True
            # ours from a previous lease (a restarted agent): free it, take it next tick
            await agent.dcs.bounded(agent.dcs._txn(
                "drop stale API VIP key", [tx.Value(key) == value, tx.Mod(key) == kvs[0].mod_revision],
                [tx.Delete(key)]), "drop stale API VIP key")
        return False

    def _took_key(self, create_revision: int, what: str) -> None:
        """The `apivip` key is newly ours: the previous holder's address, frozen with
        its agent, may live until its kernel lifetime ends, so the start waits the
        takeover grace counted from now (the key was created at or before now)."""
        log.info("API VIP: %s", what)
        self._had_key = True
        self._key_revision = create_revision
        if self.vip is not None:
            self.vip.hold_until = time.monotonic() + self.grace

    async def _drop(self, agent: Agent, why: str, release: bool, force_check: bool = False) -> None:
        assert self.vip is not None
        now = time.monotonic()
        if self.holding or force_check or now - self._vip_checked >= 2.0:
            self._vip_checked = now
            if self.holding or (await self.vip.monitor()).state.value != "stopped":
                r = await self.vip.stop()
                log.warning("API VIP removed (%s): %s", why, r)
                from tandem.cluster.agent import lab_event
                lab_event("api_vip", node=self.node, op="stop", ok=r.ok, reason=why)
                if not r.ok:
                    # Still up: freeing the key now would let the next holder add the address
                    # at once, before this one's lifetime ends. Try again next tick; the key
                    # goes with the lease if this never works.
                    return
                self.holding = False
        if release and self._had_key:
            with contextlib.suppress(DCSError):
                key = self._key(agent)
                await agent.dcs.bounded(agent.dcs._txn(
                    "release API VIP", [tx.Value(key) == encode({"node": self.node})],
                    [tx.Delete(key)]), "release API VIP")
            self._had_key = False

    async def shutdown(self, agent: Agent) -> None:
        """Agent stopping: the VIP and its key first, then haproxy and the server."""
        self.closing = True
        if self.vip is not None:
            with contextlib.suppress(Exception):
                self._had_key = True
                await self._drop(agent, "agent shutting down", release=True, force_check=True)
        for m in reversed(self.members):
            r = await m.stop()
            log.info("clone %s", r)
