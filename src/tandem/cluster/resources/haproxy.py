"""haproxy in front of the management servers, cloned on every node.

The agent writes the config from the backends it is given, checks it with
``haproxy -c`` (a bad config must never replace a working proxy), and runs
haproxy in the foreground (``-db``) as its own child in a new session, known
by pid + start time. A reload starts a new haproxy with ``-sf OLDPID``: the new
process binds (SO_REUSEPORT) and then tells the old one to finish its
connections and exit, so no connection is refused during a reload.

Routing choices (the one haproxy config of the project; it fronts the
management servers, which are stateless, so no stickiness):

- HTTP health checks (``option httpchk GET /health``, fast ``inter``/``fall``
  so a dead server leaves the rotation in about a second);
- ``retries`` plus ``option redispatch`` and ``retry-on conn-failure
  empty-response response-timeout``: a request that never reached a server
  (connection refused: the server just died) is always sent to another one;
- a request that reached a server which then died without answering may have
  been executed. CloudStack sends everything as GET, so the method says
  nothing; the command name does: only ``list*``, ``query*`` and ``get*``
  commands (:data:`READ_ONLY_COMMANDS`) are retried at layer 7. A deploy or
  stop whose answer was lost is not repeated behind the client's back: the
  client sees an error and can check ``listAsyncJobs``;
- ``http-reuse never``: every request gets a server connection of its own.
  With our ``retry-on`` set, haproxy 2.6 sends even a client's first request
  over an idle pooled server connection ("safe" reuse deems the layer-7
  retry enough), but the retry is off for commands that change things: a
  deploy written into the pooled connection of a server SIGKILLed a moment
  before got a 502 instead of going to the other server. A fresh connection
  to a dead server is refused, and that is retried anywhere. The price, a
  TCP connect per API call on the LAN, is small;
- each server is listed a second time as an unchecked *backup*: when no
  server passes its check (during a database switchover every ``/health``
  fails for a moment) requests still go to a live server, which waits for
  the database (bounded) instead of haproxy answering 503.

Monitor asks the stats socket (``show stat``): it proves the process answers
and reports which servers are UP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from tandem.cluster.resources.base import Health, Resource, ResourceError, run_cmd
from tandem.cluster.resources.config import Backend, HaproxyConfig
from tandem.cluster.resources.procs import ProcRef, spawn, tail, terminate

READ_ONLY_COMMANDS = r"^(list|query|get)"  #: commands safe to send again after reaching a server


def render(c: HaproxyConfig, stats_socket: str) -> str:
    """The haproxy configuration for `c` (pure: tests and `tandem status` can show it)."""
    servers = "\n".join(f"    server {b.name} {b.address}:{b.port} check" for b in c.backends)
    backups = "\n".join(f"    server {b.name}-any {b.address}:{b.port} backup" for b in c.backends)
    return f"""# written by tandem for resource {c.name}; changes are overwritten
global
    stats socket {stats_socket} mode 600 level admin
    maxconn 4000

defaults
    mode http
    timeout connect {c.connect_timeout_ms}ms
    timeout client {c.server_timeout_ms}ms
    timeout server {c.server_timeout_ms}ms
    timeout check {c.connect_timeout_ms}ms
    retries {c.retries}
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend {c.name}
    bind {c.bind_address}:{c.port}
    default_backend {c.name}-servers

backend {c.name}-servers
    balance roundrobin
    http-reuse never
    option allbackups
    option httpchk GET {c.health_path}
    http-check expect status 200
    # only commands that read may be sent again after reaching a server
    acl read_only url_param(command) -m reg -i {READ_ONLY_COMMANDS}
    http-request disable-l7-retry if !read_only
    default-server inter {c.check_interval_ms}ms fall {c.fall} rise {c.rise}
{servers}
{backups}
"""


class Haproxy(Resource):
    kind = "haproxy"
    config: HaproxyConfig

    @property
    def stats_socket(self) -> str:
        return str(self.private_dir / "stats.sock")

    @property
    def cfg_path(self):
        return self.private_dir / "haproxy.cfg"

    @property
    def log(self):
        return self.private_dir / "haproxy.log"

    def _ref(self) -> ProcRef | None:
        st = self.load_state()
        return ProcRef.from_json(st) if st else None

    async def _write_config(self, backends: list[Backend] | None = None) -> None:
        if backends is not None:
            self.config = self.config.model_copy(update={"backends": backends})
        tmp = self.cfg_path.with_suffix(".new")
        tmp.write_text(render(self.config, self.stats_socket))
        res = await run_cmd([self.config.haproxy, "-c", "-q", "-f", str(tmp)], timeout=10, check=False)
        if res.returncode != 0:
            raise ResourceError(f"haproxy rejects the generated config: {res.last_line}")
        os.replace(tmp, self.cfg_path)

    async def _launch(self, old: ProcRef | None) -> ProcRef:
        argv = [self.config.haproxy, "-db", "-f", str(self.cfg_path)]
        if old is not None and old.alive():
            argv += ["-sf", str(old.pid)]
        ref = spawn(argv, self.log)
        self.save_state(ref.to_json())
        deadline = time.monotonic() + self.config.start_timeout
        while True:
            if not ref.alive():
                raise ResourceError(f"haproxy exited during startup: {tail(self.log, 2)}")
            try:
                if await self._socket_pid() == ref.pid:  # not the old process's socket
                    return ref
            except (OSError, ResourceError):
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)

    async def _start(self) -> str:
        ref = self._ref()
        if ref is not None and ref.alive():
            return f"already running (pid {ref.pid})"
        await self._write_config()
        ref = await self._launch(None)
        return f"haproxy pid {ref.pid} listening on {self.config.bind_address}:{self.config.port}" \
               f" for {len(self.config.backends)} servers"

    async def reload(self, backends: list[Backend] | None = None) -> str:
        """Rewrite the config (new backends, if given) and hand over to a new
        haproxy without dropping connections."""
        old = self._ref()
        await self._write_config(backends)
        new = await self._launch(old)
        return f"reloaded: haproxy pid {new.pid} replaced pid {old.pid if old else '-'}"

    async def _stop(self) -> str:
        ref = self._ref()
        if ref is None:
            return "was not running"
        how = await terminate(ref, max(1.0, self.config.stop_timeout - 5), signal.SIGTERM)
        if ref.alive():
            raise ResourceError(f"haproxy pid {ref.pid} {how}")
        self.clear_state()
        return f"haproxy pid {ref.pid} {how}"

    async def _ask(self, command: str) -> str:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.stats_socket), 2)
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), self.config.monitor_timeout)
        finally:
            writer.close()
        return data.decode(errors="replace")

    async def _socket_pid(self) -> int:
        for line in (await self._ask("show info")).splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        raise ResourceError("stats socket: no Pid in show info")

    async def stat(self) -> dict[str, str]:
        """``show stat`` over the stats socket: {server name: status}."""
        lines = (await self._ask("show stat")).splitlines()
        if not lines or not lines[0].startswith("# "):
            raise ResourceError("stats socket gave no CSV")
        header = lines[0][2:].split(",")
        col_sv, col_px, col_st = header.index("svname"), header.index("pxname"), header.index("status")
        backend = f"{self.config.name}-servers"
        out = {}
        for line in lines[1:]:
            f = line.split(",")
            if len(f) > col_st and f[col_px] == backend and f[col_sv] not in ("FRONTEND", "BACKEND"):
                out[f[col_sv]] = f[col_st]
        return out

    async def _monitor(self) -> Health:
        ref = self._ref()
        if ref is None:
            return Health.stopped("not started")
        if not ref.alive():
            return Health.failed(f"haproxy pid {ref.pid} is gone: {tail(self.log, 1)}")
        try:
            servers = await self.stat()
        except OSError as e:
            return Health.failed(f"stats socket: {e.strerror or e}")
        servers = {n: s for n, s in servers.items() if s != "no check"}  # the unchecked backups
        up = sorted(n for n, s in servers.items() if s.startswith("UP"))
        down = sorted(n for n, s in servers.items() if not s.startswith("UP"))
        detail = f"{len(up)}/{len(servers)} servers up" + (f" (down: {', '.join(down)})" if down else "")
        if len(up) < self.config.min_servers_up:
            return Health.failed(f"pid {ref.pid}: {detail}, need {self.config.min_servers_up}")
        return Health.ok(f"pid {ref.pid}: {detail}")
