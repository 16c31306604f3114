"""Fixtures for the management server: a private MariaDB, a simulated host and
management server processes, each removed afterwards by the pid we started.

`MariaDB` is reusable by other test packages: it runs `mariadbd` from Debian in
a temporary datadir on a free loopback port, with a real password user and the
anonymous users deleted (they break TCP logins of '%' users).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import pytest
import requests

from tandem.mgmt import signing

VENV_BIN = Path(sys.executable).parent
MARIADBD = "/usr/sbin/mariadbd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _stop_pid(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


class MariaDB:
    """A private mariadbd on 127.0.0.1:<port>, started and stopped by pid."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.datadir = root / "data"
        self.socket = root / "mysqld.sock"
        self.port = port or free_port()
        self.user = "tandem"
        self.password = secrets.token_hex(12)
        self.proc: subprocess.Popen | None = None

    def install(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        with open(self.root / "mariadbd.log", "ab") as log:
            self.proc = self._popen(log)
        wait_for(self._answers, 60, f"mariadbd on port {self.port}", 0.1)

    def _popen(self, log) -> subprocess.Popen:
        return subprocess.Popen(
            [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve",
             f"--pid-file={self.root / 'mariadbd.pid'}", "--innodb-flush-log-at-trx-commit=2",
             "--innodb-buffer-pool-size=64M", "--max-connections=400", "--skip-log-bin"],
            stdout=log, stderr=log, start_new_session=True)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"mariadbd exited: {(self.root / 'mariadbd.log').read_text()[-2000:]}")
        try:
            pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=1).close()
            return True
        except pymysql.err.MySQLError:
            return False

    def setup_user(self) -> None:
        with self.root_conn() as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM mysql.global_priv WHERE User=''")
            cur.execute("FLUSH PRIVILEGES")
            cur.execute(f"CREATE USER IF NOT EXISTS '{self.user}'@'127.0.0.1' IDENTIFIED BY %s",
                        (self.password,))
            cur.execute(f"GRANT ALL ON *.* TO '{self.user}'@'127.0.0.1'")

    @contextlib.contextmanager
    def root_conn(self) -> Iterator[pymysql.connections.Connection]:
        conn = pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)
        try:
            yield conn
        finally:
            conn.close()

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; returns its name."""
        name = name or "t_" + secrets.token_hex(6)
        with self.root_conn() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        return name

    def url(self, database: str, with_password: bool = False) -> str:
        auth = f"{self.user}:{self.password}" if with_password else self.user
        return f"mysql://{auth}@127.0.0.1:{self.port}/{database}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            _stop_pid(self.proc, sig, timeout=30)
            self.proc = None

    @classmethod
    def fresh(cls, root: Path, port: int | None = None) -> MariaDB:
        db = cls(root, port)
        db.install()
        db.start()
        db.setup_user()
        return db


@pytest.fixture(scope="session", autouse=True)
def mgmt_key_file() -> Iterator[Path]:
    """The key that seals API secrets, for every `tandem mgmt` the tests start
    (through the environment, as an operator may give it)."""
    root = Path(tempfile.mkdtemp(prefix="tandem-mgmt-key-", dir="/var/tmp"))
    path = root / "secret"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    old = os.environ.get("TANDEM_MGMT_KEY_FILE")
    os.environ["TANDEM_MGMT_KEY_FILE"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("TANDEM_MGMT_KEY_FILE", None)
        else:
            os.environ["TANDEM_MGMT_KEY_FILE"] = old
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def private_mariadb(prefix: str = "tandem-mariadb-") -> Iterator[MariaDB]:
    """A fresh MariaDB in a temporary directory, stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    db = None
    try:
        db = MariaDB.fresh(root)
        yield db
    finally:
        if db is not None:
            db.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    with private_mariadb() as db:
        yield db


@pytest.fixture
def database(mariadb: MariaDB) -> str:
    """A fresh database on the session's MariaDB, one per test."""
    return mariadb.create_database()


# -- processes -------------------------------------------------------------------------
@functools.cache
def mgmt_cmd() -> list[str]:
    """`tandem mgmt`, or the module itself until the CLI wires it in."""
    exe = VENV_BIN / "tandem"
    if exe.exists() and subprocess.run([str(exe), "mgmt", "--help"], capture_output=True).returncode == 0:
        return [str(exe), "mgmt"]
    return [sys.executable, "-m", "tandem.cli.mgmt_cmd"]


class Procs:
    """Processes a test started; all stopped (by pid) when the test ends."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self._cmd = mgmt_cmd()

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([*self._cmd, *args], stdout=log, stderr=log, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            _stop_pid(proc)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


class SimHostProc:
    def __init__(self, procs: Procs, op_seconds: float = 0.3, port: int | None = None,
                 clock_offset: float = 0.0):
        self.port = port or free_port()
        self.dir = procs.root / "simhost"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = procs.spawn("simhost", ["simhost", "--state-dir", str(self.dir), "--listen",
                                            f"127.0.0.1:{self.port}", "--op-seconds", str(op_seconds),
                                            "--clock-offset", str(clock_offset)])
        wait_for(lambda: self._up(procs), 30, "simhost")

    def _up(self, procs: Procs) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"simhost exited: {procs.log('simhost')[-2000:]}")
        return _http_ok(self.url + "/health")

    def effects(self) -> list[dict[str, Any]]:
        path = self.dir / "effects.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stats(self) -> dict[str, int]:
        return requests.get(self.url + "/v1/stats", timeout=5).json()

    def vms(self) -> dict[str, Any]:
        return requests.get(self.url + "/v1/vms", timeout=5).json()["vms"]


class MgmtProc:
    def __init__(self, procs: Procs, mariadb: MariaDB, database: str, simhost: SimHostProc, server_id: str,
                 dead_after: float = 3.0, db_retry: float = 8.0, host_retry: float = 20.0,
                 extra: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.port = free_port()
        self.server_id = server_id
        self.endpoint = f"http://127.0.0.1:{self.port}/client/api"
        self.base = f"http://127.0.0.1:{self.port}"
        self.procs = procs
        self.proc = procs.spawn(server_id, [
            "serve", "--db", mariadb.url(database), "--listen", f"127.0.0.1:{self.port}",
            "--server-id", server_id, "--simhost", simhost.url, "--dead-after", str(dead_after),
            "--db-retry", str(db_retry), "--host-retry", str(host_retry), *extra],
            env={"TANDEM_DB_PASSWORD": mariadb.password, **(env or {})})
        wait_for(self._up, 30, f"management server {server_id}")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.server_id} exited: {self.procs.log(self.server_id)[-3000:]}")
        return _http_ok(self.base + "/health")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def create_admin(procs: Procs, mariadb: MariaDB, database: str, username: str = "admin",
                 user: bool = False) -> dict[str, str]:
    pwfile = procs.root / f"{username}.pw"
    pwfile.write_text("s3cret-" + username)
    pwfile.chmod(0o600)
    args = [*mgmt_cmd(), "create-admin", "--db", mariadb.url(database), "--username", username,
            "--password-file", str(pwfile), "--json"] + (["--user"] if user else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TANDEM_DB_PASSWORD": mariadb.password})
    assert out.returncode == 0, out.stderr
    assert mariadb.password not in out.stdout + out.stderr
    return {**json.loads(out.stdout), "password": "s3cret-" + username}


# -- a tiny signed client (independent of the server's code except `signing.sign`) ---------
class Api:
    """Signed CloudStack API calls, for tests that need exact control."""

    def __init__(self, endpoint: str, apikey: str, secret: str):
        self.endpoint, self.apikey, self.secret = endpoint, apikey, secret

    def params(self, command: str, version3: bool = True, expires_in: float = 600, **params: Any) -> dict:
        p = {"command": command, "response": "json", "apiKey": self.apikey,
             **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}}
        if version3:
            p["signatureVersion"] = "3"
            p["expires"] = (datetime.now(UTC) + timedelta(seconds=expires_in)).strftime("%Y-%m-%dT%H:%M:%S%z")
        p["signature"] = signing.sign(p, self.secret)
        return p

    def raw(self, command: str, method: str = "GET", **params: Any) -> requests.Response:
        p = self.params(command, **params)
        if method == "POST":
            return requests.post(self.endpoint, data=p, timeout=30)
        return requests.get(self.endpoint, params=p, timeout=30)

    def __call__(self, command: str, **params: Any) -> dict[str, Any]:
        resp = self.raw(command, **params)
        body = resp.json()
        assert resp.status_code == 200, body
        [value] = body.values()
        return value

    def wait_job(self, jobid: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            r = self("queryAsyncJobResult", jobid=jobid)
            return r if r["jobstatus"] != 0 else None
        return wait_for(done, timeout, f"job {jobid}", 0.1)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def cloud(procs: Procs, mariadb: MariaDB, database: str):
    """One simulated host, one management server, an admin with keys."""
    host = SimHostProc(procs)
    server = MgmtProc(procs, mariadb, database, host, "mgmt1")
    admin = create_admin(procs, mariadb, database)
    api = Api(server.endpoint, admin["apikey"], admin["secretkey"])
    return {"host": host, "server": server, "admin": admin, "api": api, "db": database}
