"""The whole tandem stack in a lab: etcd on node1, node2 and the witness (its
leader moved to the witness), a replicated volume on node1/node2, and an agent
on each data node running the database group (volume -> ext4 -> MariaDB -> DB
VIP). Used by the demo, the agent tests and the benchmarks, through the same
CLI and config file an operator would use."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tandem.cluster.status import clones_from_kvs, status_dict
from tandem.config import Config, db_tls_ca, etcd_endpoints, load_config
from tandem.dcs.base import DCSError
from tandem.dcs.etcd_server import LabEtcd
from tandem.dcs.gateway import read_prefix
from tandem.dcs.keys import Keys, view_from_kvs
from tandem.errors import LabError
from tandem.lab.clusterconf import host_env, tandem_argv, write_cluster_config
from tandem.lab.lab import Lab
from tandem.lab.shell import ns_prefix
from tandem.mgmt.db import answers
from tandem.secretfile import write_private
from tandem.volume import control
from tandem.volume.control import ControlError
from tandem.volume.spec import resolve

DATA_NODES = ("node1", "node2")


class LabStack:
    def __init__(self, lab: Lab, volume_size: str = "256MiB", ping_timeout: float = 0.5,
                 lease_ttl: int = 1, extra_config: str = ""):
        """`extra_config`: more TOML for the cluster config (fencing, agent notify hooks), see
        :func:`tandem.lab.clusterconf.lab_fencing`."""
        self.lab = lab
        etc = lab.spec.dir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        self.password_file = etc / "db-password"
        if not self.password_file.exists():
            write_private(self.password_file, (secrets.token_hex(16) + "\n").encode())
        self.vip = str(lab.spec.vip(0))
        extra = f"""
[database]
volume = "db"
mountpoint = "dbmnt"
port = 3306
vip = {{ address = "{self.vip}/24" }}
password_file = "{self.password_file}"
binlog_expire_seconds = 300
max_binlog_size = "16M"
databases = ["tandem"]
{extra_config}"""
        # The volume daemon records "peer Outdated" in the DCS itself (fence_peer = "dcs").
        # The agent tells a volume when its node lost the leader key involuntarily:
        # after a partition, that side's writes were never acknowledged (held by the
        # fence-peer step), so the agent-managed cluster discards them by policy.
        self.config = write_cluster_config(lab, volume_size=volume_size, ping_timeout=ping_timeout,
                                           fence_peer="dcs", extra=extra, etcd=f"lease_ttl = {lease_ttl}\n",
                                           after_split_brain="discard-least-recent-primary")
        self.etcd = LabEtcd(lab)
        self._cfg: tuple[int, Config] | None = None
        self._local = threading.local()  # one HTTP session per thread

    # --- commands ------------------------------------------------------------------
    def env(self, host: str) -> dict[str, str]:
        return host_env(self.lab, host, self.config)

    def tandem(self, host: str, *args: str, check: bool = True, timeout: float = 60,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run([*ns_prefix(self.lab.spec.netns(host)), *tandem_argv(*args)],
                                  capture_output=True, text=True, timeout=timeout, input=input,
                                  env={**os.environ, **self.env(host)})
        except subprocess.TimeoutExpired:  # a LabError, as lab.run's: the campaign's checks go on
            raise LabError(f"{host}: tandem {' '.join(args)}: no answer within {timeout:g} s") from None
        if check and proc.returncode != 0:
            raise LabError(f"{host}: tandem {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
        return proc

    def cluster_config(self) -> Config:
        """The cluster config, read again only when its file changed."""
        mtime = self.config.stat().st_mtime_ns
        if self._cfg is None or self._cfg[0] != mtime:
            self._cfg = (mtime, load_config(self.config))
        return self._cfg[1]

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "http"):
            self._local.http = requests.Session()
        return self._local.http

    def status(self, host: str = "witness") -> dict:
        """What `tandem status --json` prints, read in this process from the operator's
        seat (the root namespace reaches the public bridge), HOST's etcd member first.
        The campaign polls this several times a second: a new process per poll cost
        0.7 s of CPU each and slowed two labs on two cores to a crawl."""
        cfg = self.cluster_config()
        keys = Keys(cfg.cluster.name)
        try:
            revision, kvs = read_prefix(etcd_endpoints(cfg, host), keys.prefix, session=self._session(),
                                        tls=self.etcd.client_tls)
        except DCSError as e:
            raise LabError(str(e)) from None
        clones = clones_from_kvs(keys.prefix, [(kv.key, kv.value) for kv in kvs]) if cfg.mgmt else None
        api_vip = str(cfg.mgmt.api_vip.address.ip) if cfg.mgmt and cfg.mgmt.api_vip else None
        st = status_dict(view_from_kvs(keys, revision, kvs), list(cfg.nodes), self.vip, clones=clones,
                         api_vip=api_vip)
        return json.loads(json.dumps(st))  # the CLI's types (lists, not tuples)

    def volume_status(self, host: str, timeout: float = 10) -> dict:
        """What `tandem volume status db --json` prints on HOST, from the daemon's control
        socket (a file: no network namespace needed)."""
        hd = self.lab.host_dir(host)
        spec = resolve(self.cluster_config(), "db", host, hd / "data", hd / "run")
        try:
            return control.call(spec.control_socket, "status", timeout=timeout)
        except (ControlError, OSError, ValueError) as e:
            raise LabError(f"{host}: volume status: {e}") from None

    # --- life cycle ----------------------------------------------------------------
    def start(self, timeout: float = 120) -> None:
        self.etcd.start()
        self.etcd.move_leader("witness")
        for h in DATA_NODES:
            for name in ("db.img", "db.meta"):
                (self.lab.host_dir(h) / "data" / name).unlink(missing_ok=True)
            self.tandem(h, "volume", "create", "db")
            self.start_volume(h)
        # Initial full sync from node1, then hand the role to the agents.
        self.tandem("node1", "volume", "primary", "db", "--force")
        self.wait(lambda: self.volume_status("node2")["disk"] == "UpToDate", 120, "initial sync")
        self.tandem("node1", "volume", "secondary", "db")
        self.start_agent("node1")
        self.wait(lambda: (self.status().get("leader") or {}).get("node") == "node1", 60,
                  "node1 to lead")
        self.start_agent("node2")
        self.wait_service(timeout)

    def start_volume(self, host: str) -> None:
        self.lab.spawn(host, "volume-db", tandem_argv("volume", "up", "db"), env=self.env(host))
        self.wait(lambda: self.tandem(host, "volume", "status", "db", check=False).returncode == 0,
                  20, f"{host} volume daemon")

    def start_agent(self, host: str) -> None:
        self.lab.spawn(host, "agent", tandem_argv("agent"), env=self.env(host))

    def restart_host(self, host: str) -> None:
        """After a crash: links up, etcd member, volume daemon and agent again."""
        self.lab.faults.restart(host)
        self.etcd.start_member(host)
        self.start_volume(host)
        self.start_agent(host)

    def wait_service(self, timeout: float = 60) -> str:
        """Until some node leads with its group started and the DB answers on the VIP."""
        def leader() -> str | None:
            st = self.status()
            lead = st.get("leader")
            if not lead:
                return None
            row = next(n for n in st["nodes"] if n["node"] == lead["node"])
            return lead["node"] if row["role"] == "Leader" and row["healthy"] else None

        def ok():
            # The leader before and after the ping: read before only, a crashed leader
            # whose key had not expired yet was named when the new one answered the
            # ping a moment later.
            first = leader()
            return first if first is not None and self.db_ping() and leader() == first else None
        return self.wait(ok, timeout, "the database service")

    @property
    def db_ca(self) -> str | None:
        """The CA a database client checks MariaDB against (None: plain TCP)."""
        ca = db_tls_ca(self.cluster_config())
        return None if ca is None else str(ca)

    def db_ping(self) -> bool:
        """The DB VIP answers a query (from the root namespace, on the public bridge)."""
        return answers(connect_timeout=1, read_timeout=5, write_timeout=5, host=self.vip, user="tandem",
                       password=self.password_file.read_text().strip(), ssl_ca=self.db_ca)

    def sql(self, sql: str, *params: str, database: str | None = "tandem", host: str = "client") -> dict:
        """One statement through the DB VIP from a lab host (tandem.lab.dbquery): its
        rows and row count."""
        ca = self.db_ca
        proc = self.lab.run(host, [sys.executable, "-m", "tandem.lab.dbquery", "--host", self.vip,
                                   "--password-file", str(self.password_file),
                                   *(["--ssl-ca", ca] if ca else []),
                                   *(["--database", database] if database else []), "--", sql, *params],
                            timeout=60)
        return json.loads(proc.stdout)

    def query(self, sql: str, host: str = "client") -> list[tuple]:
        return [tuple(r) for r in self.sql(sql, host=host)["rows"]]

    def start_writer(self, name: str = "writer", duration: float = 600, extra: tuple[str, ...] = ()) -> Path:
        """tandem.lab.writer on the client, through the DB VIP; `extra`: more of its options."""
        out = self.lab.host_dir("client") / "data" / f"{name}.jsonl"
        out.unlink(missing_ok=True)
        ca = self.db_ca
        self.lab.spawn("client", name, [sys.executable, "-m", "tandem.lab.writer", "--host", self.vip,
                                        "--password-file", str(self.password_file), "--out", str(out),
                                        "--duration", str(duration), "--writer-id", name,
                                        *(["--ssl-ca", ca] if ca else []), *extra])
        return out

    def leader(self) -> str | None:
        return (self.status().get("leader") or {}).get("node")

    def wait(self, pred, timeout: float, what: str, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = pred()
                if last:
                    return last
            except (LabError, json.JSONDecodeError, StopIteration) as e:
                last = e
            time.sleep(interval)
        raise LabError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r}); logs in"
                       f" {self.lab.spec.dir}/hosts/*/log")

    def stop(self) -> None:
        for h in DATA_NODES:
            for proc in ("agent", "volume-db"):
                rec = self.lab.supervisor(h).get(proc)
                if rec:
                    self.lab.stop(h, proc, timeout=20)
        self.etcd.stop()
