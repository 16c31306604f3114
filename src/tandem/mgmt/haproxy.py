"""The haproxy configuration that puts several management servers behind one
address.

Every management server is stateless, so haproxy may send any request to any of
them: no stickiness. Health checks call `/health`, which answers 200 only while
that server reaches the database. Retrying is where care is needed:

- a request that never reached a server (connection refused: the server just
  died) is always safe to send to another one (`conn-failure`, `redispatch`);
- a request that reached a server which then died without answering may have
  been executed. CloudStack sends everything as GET, so the method says
  nothing; the command name does: `list*`, `query*` and `get*` commands only
  read, and only those are retried at layer 7. A deploy or stop whose answer
  was lost is not repeated behind the client's back — the client sees a 502
  and can check `listAsyncJobs`.
"""

from __future__ import annotations

from dataclasses import dataclass

READ_ONLY_COMMANDS = r"^(list|query|get)"


@dataclass(frozen=True)
class Backend:
    name: str
    address: str  # host:port of a management server


def render_config(listen: str, backends: list[Backend], *, check_interval_ms: int = 500,
                  fall: int = 3, rise: int = 2, check_timeout_ms: int = 2000,
                  pidfile: str | None = None) -> str:
    """An haproxy.cfg for `backends`, serving the API on `listen` (host:port)."""
    servers = "\n".join(f"    server {b.name} {b.address} check" for b in backends)
    return f"""global
    maxconn 4000
{f"    pidfile {pidfile}" if pidfile else ""}

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check {check_timeout_ms}ms
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    option httpchk
    http-check send meth GET uri /health
    default-server inter {check_interval_ms}ms fall {fall} rise {rise}

frontend cloudstack_api
    bind {listen}
    default_backend mgmt

backend mgmt
    balance roundrobin
    # only commands that read may be sent again after reaching a server
    acl read_only url_param(command) -m reg -i {READ_ONLY_COMMANDS}
    http-request disable-l7-retry if !read_only
{servers}
"""
