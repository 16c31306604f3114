"""The whole stack with the management tier: :class:`LabStack` (etcd, volume,
agents with the DB group) plus an ``[mgmt]`` section in the cluster config, so
each agent also runs haproxy and a management server as clones and places the
API VIP; a simulated hypervisor host on the witness; an admin with API keys.

Addresses: DB VIP ``lab.spec.vip(0)``, API VIP ``lab.spec.vip(1)`` port 8080
(haproxy on every node), management servers on each node's public address
port 8081, the simulated host on the witness port 8250.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import requests

from tandem.errors import LabError
from tandem.lab.clusterconf import tandem_argv
from tandem.lab.lab import Lab
from tandem.lab.stack import DATA_NODES, LabStack
from tandem.mgmt.db import DbUrl
from tandem.secretfile import write_private

API_PORT = 8080
SERVER_PORT = 8081
SIMHOST_PORT = 8250
DB_NAME = "cloud"


class MgmtStack(LabStack):
    def __init__(self, lab: Lab, volume_size: str = "256MiB", op_seconds: float = 0.5,
                 dead_after: float = 2.0, db_retry: float = 10.0, **kw: Any):
        super().__init__(lab, volume_size=volume_size, **kw)
        self.api_vip = str(lab.spec.vip(1))
        self.op_seconds = op_seconds
        self.db_retry = db_retry  #: the servers' database retry budget: the bound of a request's wait
        self.simhost_url = f"http://{lab.address('witness')}:{SIMHOST_PORT}"
        self.simhost_dir = lab.host_dir("witness") / "data" / "simhost"
        with open(self.config, "a") as f:
            f.write(f"""
[mgmt]
port = {API_PORT}
server_port = {SERVER_PORT}
api_vip = {{ address = "{self.api_vip}/24" }}
simhost = "{self.simhost_url}"
db_name = "{DB_NAME}"
dead_after = {dead_after}
db_retry = {db_retry}
""")
        self.admin: dict[str, str] = {}
        self.key_file = lab.spec.dir / "etc" / "secret"  #: the cluster secret (clusterconf writes it)

    # --- addresses ---------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The single address clients use."""
        return f"http://{self.api_vip}:{API_PORT}/client/api"

    def server_endpoint(self, node: str) -> str:
        return f"http://{self.lab.address(node)}:{SERVER_PORT}/client/api"

    def db_url(self) -> str:
        return DbUrl(host=self.vip, port=3306, user="tandem", database=DB_NAME, ssl_ca=self.db_ca).safe()

    # --- life cycle --------------------------------------------------------------------
    def start(self, timeout: float = 120) -> None:
        self.start_simhost()
        super().start(timeout)
        self.create_admin()
        self.wait_api(timeout)

    def start_simhost(self) -> None:
        self.simhost_dir.mkdir(parents=True, exist_ok=True)
        self.lab.spawn("witness", "simhost", tandem_argv(
            "mgmt", "simhost", "--state-dir", str(self.simhost_dir), "--listen",
            f"{self.lab.address('witness')}:{SIMHOST_PORT}", "--op-seconds", str(self.op_seconds)))
        self.wait(lambda: self._client_get(f"{self.simhost_url}/health") == 200, 30, "the simulated host")

    def create_admin(self, username: str = "admin") -> dict[str, str]:
        pw = self.lab.spec.dir / "etc" / f"{username}.pw"
        write_private(pw, f"s3cret-{username}-pass\n".encode())
        # The agents' management servers create the database when they start;
        # do it here too so this does not wait for them.
        self.sql(f"CREATE DATABASE IF NOT EXISTS `{DB_NAME}`", database=None)
        proc = self.lab.run("client", [*tandem_argv("mgmt", "create-admin", "--db", self.db_url(),
                                                    "--db-password-file", str(self.password_file),
                                                    "--key-file", str(self.key_file),
                                                    "--username", username, "--password-file", str(pw),
                                                    "--json")], check=False, timeout=120)
        if proc.returncode != 0:
            raise LabError(f"create-admin: {(proc.stderr or proc.stdout).strip()}")
        self.admin = {**json.loads(proc.stdout), "password": pw.read_text().strip()}
        return self.admin

    def wait_api(self, timeout: float = 60) -> None:
        """Until both servers pass their health check and the API VIP answers."""
        for n in DATA_NODES:
            url = f"http://{self.lab.address(n)}:{SERVER_PORT}/health"
            self.wait(lambda url=url: self._client_get(url) == 200, timeout, f"the management server on {n}")
        self.wait(lambda: self._client_get(f"http://{self.api_vip}:{API_PORT}/health") == 200, timeout,
                  "the API VIP")

    def stop(self) -> None:
        super().stop()
        if self.lab.supervisor("witness").get("simhost"):
            self.lab.stop("witness", "simhost")

    # --- inspection --------------------------------------------------------------------
    def mgmt_state(self, node: str) -> dict[str, Any]:
        """The clone's record: pid, start time, server id of the running server."""
        path = self.lab.host_dir(node) / "run" / "clones" / "mgmt" / "state.json"
        return json.loads(path.read_text())

    def query_cloud(self, sql: str, *args: str) -> list[tuple]:
        """Rows of `sql` (with %s parameters `args`) in the management database, via the DB VIP."""
        return [tuple(r) for r in self.sql(sql, *args, database=DB_NAME)["rows"]]

    def api_vip_holders(self) -> list[str]:
        from tandem.cluster.resources.vip import holders
        return holders(self.lab, self.api_vip)

    def effects(self) -> list[dict[str, Any]]:
        path = self.simhost_dir / "effects.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _client_get(self, url: str) -> int | None:
        proc = self._client_python(
            "import sys,urllib.request,urllib.error\n"
            "try:\n"
            " print(urllib.request.urlopen(sys.argv[1],timeout=2).status)\n"
            "except urllib.error.HTTPError as e:\n"
            " print(e.code)\n"
            "except Exception:\n"
            " print(0)\n", url, check=False)
        try:
            return int(proc.stdout.strip() or 0) or None
        except ValueError:
            return None

    def _client_python(self, code: str, *args: str, check: bool = True):
        return self.lab.run("client", [sys.executable, "-c", code, *args], check=check, timeout=30)


def client_session() -> requests.Session:
    """A requests session that ignores proxies from the environment (lab traffic only)."""
    s = requests.Session()
    s.trust_env = False
    return s


__all__ = ["API_PORT", "DB_NAME", "MgmtStack", "SERVER_PORT", "SIMHOST_PORT", "client_session"]
