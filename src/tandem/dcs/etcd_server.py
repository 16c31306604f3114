"""Run tandem's own three-member etcd cluster (node1, node2, witness).

Why these settings:

- ``--heartbeat-interval 50 --election-timeout 500``: every member shares one
  machine or one LAN, so round trips are well under a millisecond and a 500 ms
  election timeout (10 heartbeats) is still two orders of magnitude above them.
  The election timeout sets the smallest lease etcd grants: the lessor refuses
  TTLs below ``ceil(1.5 * election timeout)`` seconds, so 2 s with the default
  1000 ms and **1 s** with 500 ms (measured by ``tests/dcs``: a 1 s request is
  granted 1 s here). The lease TTL is the floor of failover time, so this is
  the knob that matters; going below 500 ms buys nothing (the floor stays 1 s,
  TTLs are whole seconds) and only risks spurious elections on a loaded host.
- ``--pre-vote``: a member that was partitioned away comes back with a higher
  term; without pre-vote it forces an election on return, which moves etcd's
  leader off the witness and, worse, extends every lease by an election
  timeout (the new leader renews all leases), delaying failover. Off by
  default in 3.4.
- etcd's leader should sit on the witness (:meth:`LabEtcd.move_leader`): a
  crashed data node then costs no etcd election, and the crashed node's lease
  expires after its TTL instead of TTL plus an election. Measured with
  ``python -m tests.dcs.measure_lease --trials 5`` (TTL 1 s, keepalive every
  0.25 s, holder crashed with its local member): leader key gone 0.90-1.04 s
  after the crash (1.08-1.22 s after the last keepalive) with etcd's leader on
  the witness, 2.23-2.35 s with it on the crashed node.
- ``--auto-compaction-retention 1h`` (periodic): tandem keys change on every
  agent cycle; without compaction the revision history grows forever.

The command-line builder is pure so the agent (embedded mode) and the lab use
the same flags; :class:`LabEtcd` runs members in lab hosts and uses etcdctl for
health and leadership moves.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.dcs.base import DCSError
from tandem.dcs.pki import HostTls

if TYPE_CHECKING:
    from tandem.lab.lab import Lab

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
CLIENT_PORT = 2379
PEER_PORT = 2380
DATA_HOSTS = ("node1", "node2", "witness")


@dataclass(frozen=True)
class Timing:
    """Raft timing of the cluster; see the module docstring for the choice."""

    heartbeat_ms: int = 50
    election_ms: int = 500

    @property
    def min_lease_ttl(self) -> int:
        """The smallest TTL (s) etcd 3.4 grants: ceil(1.5 * election timeout)."""
        return max(1, -(-3 * self.election_ms // 2000))


@dataclass(frozen=True)
class EtcdMember:
    """One member: its name and where it listens."""

    name: str
    address: str  # the host's address clients and peers reach it on
    data_dir: Path
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT
    tls: HostTls | None = None  # this member's certificate; None: plain (external etcd only)

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.address}:{self.peer_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.address}:{self.client_port}"

    @property
    def endpoint(self) -> str:
        """host:port, the form :class:`tandem.dcs.etcd.EtcdDCS` takes."""
        return f"{self.address}:{self.client_port}"


def member_command(member: EtcdMember, cluster: Sequence[EtcdMember], token: str,
                   timing: Timing = Timing(), state: str = "new") -> list[str]:
    """The etcd command line for `member` of `cluster`.

    Also listens on 127.0.0.1 so the agent on the same host can use its local
    member without knowing the address; advertises only the routable one.
    Once the data dir exists etcd ignores the initial-cluster flags, so the
    same command restarts a crashed member. With the member's `tls`, clients and
    peers must show a certificate of the cluster's CA (see tandem.dcs.pki).
    """
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster)
    return [
        ETCD,
        "--name", member.name,
        "--data-dir", str(member.data_dir),
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--listen-client-urls", f"{member.client_url},{member.scheme}://127.0.0.1:{member.client_port}",
        "--advertise-client-urls", member.client_url,
        "--initial-cluster", initial,
        "--initial-cluster-token", token,
        "--initial-cluster-state", state,
        "--heartbeat-interval", str(timing.heartbeat_ms),
        "--election-timeout", str(timing.election_ms),
        "--pre-vote",
        "--auto-compaction-mode", "periodic",
        "--auto-compaction-retention", "1h",
        "--enable-v2=false",
        "--logger", "zap",
        "--log-level", "warn",
        *(member.tls.etcd_server_args() if member.tls is not None else []),
    ]


def _etcdctl(endpoints: Sequence[str], args: Sequence[str], timeout: float,
             tls: HostTls | None) -> subprocess.CompletedProcess:
    urls = [f"https://{e}" if tls is not None else e for e in endpoints]
    cmd = [ETCDCTL, f"--endpoints={','.join(urls)}", "--dial-timeout=1s",
           f"--command-timeout={max(1, int(timeout))}s", *(tls.etcdctl_args() if tls else []), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 2,
                              env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        raise DCSError(f"etcdctl {' '.join(args)}: timed out after {timeout}s") from None


def etcdctl(endpoints: Sequence[str], *args: str, timeout: float = 5.0, tls: HostTls | None = None) -> str:
    """Run etcdctl (v3 API) against `endpoints`; raise DCSError with its message."""
    proc = _etcdctl(endpoints, args, timeout, tls)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise DCSError(f"etcdctl {' '.join(args)}: {lines[-1] if lines else proc.returncode}")
    return proc.stdout


def endpoint_status(endpoints: Sequence[str], timeout: float = 2.0, tls: HostTls | None = None) -> list[dict]:
    """Status of each endpoint that answered: endpoint, member_id, leader_id, raft_term.
    (etcdctl exits non-zero when one endpoint fails but still prints the others.)"""
    out = _etcdctl(endpoints, ["endpoint", "status", "-w", "json"], timeout, tls).stdout
    try:
        rows = json.loads(out) if out.strip() else []
    except json.JSONDecodeError:
        return []
    return [{"endpoint": r["Endpoint"], "member_id": r["Status"]["header"]["member_id"],
             "leader_id": r["Status"]["leader"], "raft_term": r["Status"]["raftTerm"]}
            for r in rows]


class LabEtcd:
    """A three-member etcd cluster running in lab hosts (one process each)."""

    def __init__(self, lab: Lab, hosts: Sequence[str] = DATA_HOSTS, timing: Timing = Timing(),
                 name: str = "etcd", client_port: int = CLIENT_PORT, peer_port: int = PEER_PORT):
        """`name` names the process and data dir, so a second cluster (other
        ports) can run beside the first in the same lab."""
        from tandem.lab.clusterconf import lab_pki
        self.lab = lab
        self.hosts = tuple(hosts)
        self.timing = timing
        self.proc = name
        self.token = f"tandem-{lab.spec.name}-{name}"
        self.tls_dir = lab_pki(lab)
        self.members = {h: EtcdMember(h, lab.address(h), lab.host_dir(h) / "data" / name,
                                      client_port, peer_port, HostTls.of(self.tls_dir, h))
                        for h in self.hosts}
        #: what the lab's own tools (etcdctl from the root namespace) present
        self.client_tls = HostTls.of(self.tls_dir, "client")

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members.values()]

    def endpoint(self, host: str) -> str:
        return self.members[host].endpoint

    # --- processes ---------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Start every member that is not running and wait until all are healthy."""
        if shutil.which(ETCD) is None:
            raise DCSError(f"{ETCD} is missing: run scripts/setup (Debian etcd-server)")
        for h in self.hosts:
            self.start_member(h)
        self.wait_healthy(timeout)

    def start_member(self, host: str) -> None:
        if self.running(host):
            return
        m = self.members[host]
        state = "existing" if (m.data_dir / "member").exists() else "new"
        m.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.lab.spawn(host, self.proc,
                       member_command(m, list(self.members.values()), self.token, self.timing, state))

    def running(self, host: str) -> bool:
        return self.lab.supervisor(host).running(self.proc)

    def stop(self) -> None:
        for h in self.hosts:
            self.lab.stop(h, self.proc, timeout=5)

    # --- health and leadership ---------------------------------------------------
    def healthy(self, hosts: Sequence[str] | None = None) -> bool:
        eps = [self.endpoint(h) for h in (hosts or self.hosts)]
        try:
            etcdctl(eps, "endpoint", "health", timeout=2, tls=self.client_tls)
        except DCSError:
            return False
        return True

    def wait_healthy(self, timeout: float = 20.0, hosts: Sequence[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy(hosts):
            if time.monotonic() > deadline:
                raise DCSError(f"etcd cluster in lab {self.lab.spec.name} not healthy after {timeout}s"
                               f" (logs in {self.lab.host_dir(self.hosts[0]) / 'log'})")
            time.sleep(0.1)

    def leader(self) -> str | None:
        """The host whose member is etcd's raft leader, or None if unknown."""
        by_id = {}
        leader_ids = set()
        for row in endpoint_status(self.endpoints, tls=self.client_tls):
            host = next(h for h, m in self.members.items() if m.endpoint in row["endpoint"])
            by_id[row["member_id"]] = host
            leader_ids.add(row["leader_id"])
        if len(leader_ids) != 1:
            return None
        return by_id.get(leader_ids.pop())

    def move_leader(self, host: str = "witness", timeout: float = 10.0) -> None:
        """Make `host`'s member the raft leader (maintenance MoveLeader), so that
        the crash of a data node never costs an etcd election."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.leader()
            if current == host:
                return
            if current is not None:
                rows = endpoint_status([self.endpoint(host)], tls=self.client_tls)
                # A failure means leadership moved meanwhile: look again.
                with contextlib.suppress(DCSError, IndexError):
                    etcdctl([self.endpoint(current)], "move-leader", format(rows[0]["member_id"], "x"),
                            tls=self.client_tls)
            if time.monotonic() > deadline:
                raise DCSError(f"could not move etcd's leader to {host} (it is on {current})")
            time.sleep(0.1)
