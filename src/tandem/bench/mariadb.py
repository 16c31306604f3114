"""Private MariaDB instances and sysbench runs for benchmarks.

Each instance is started with ``--no-defaults`` inside a lab host (so replication
traffic between instances crosses the lab's replication network), with its
socket and pid file outside the datadir, binary log on and full durability
(``sync_binlog=1``, ``innodb_flush_log_at_trx_commit=1``). Every option that
affects speed comes from one list, :data:`COMMON_OPTIONS`, applied identically
to every instance a benchmark compares. Anonymous users are deleted after
install (they break TCP logins as a ``'%'`` user).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tandem.cluster.resources.mariadb import REDO_LOG
from tandem.cluster.resources.unwritten import write_out_unwritten
from tandem.errors import TandemError
from tandem.lab.lab import Lab

COMMON_OPTIONS: tuple[str, ...] = (
    "--log-bin=mysql-bin",
    "--sync-binlog=1",
    "--innodb-flush-log-at-trx-commit=1",
    "--innodb-buffer-pool-size=256M",
    "--innodb-log-file-size=64M",
    "--binlog-format=ROW",
    "--max-connections=64",
    "--skip-name-resolve",
    "--performance-schema=OFF",
)
"""Durability and size options shared by every instance of a comparison."""


class BenchError(TandemError):
    pass


@dataclass
class MariaDB:
    """One private mariadbd in lab host ``host``; data in ``datadir``."""

    lab: Lab
    host: str
    name: str
    datadir: Path
    server_id: int = 1
    port: int = 3306
    extra: list[str] = field(default_factory=list)

    @property
    def rundir(self) -> Path:
        return self.lab.host_dir(self.host) / "run" / self.name

    @property
    def socket(self) -> Path:
        return self.rundir / "mysqld.sock"

    @property
    def options(self) -> list[str]:
        return [*COMMON_OPTIONS, *self.extra]

    def install(self) -> None:
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        self.datadir.mkdir(parents=True)
        self.rundir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db",
             "--innodb-log-file-size=64M"],
            capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise BenchError(f"mariadb-install-db for {self.name} failed:"
                             f" {(proc.stderr or proc.stdout).strip()[-400:]}")
        write_out_unwritten(self.datadir / REDO_LOG)  # as the agent's install does, on every instance

    def start(self, timeout: float = 60) -> None:
        argv = ["mariadbd", "--no-defaults", f"--datadir={self.datadir}",
                f"--socket={self.socket}", f"--pid-file={self.rundir / 'mariadbd.pid'}",
                f"--port={self.port}", "--bind-address=0.0.0.0", "--user=root",
                f"--server-id={self.server_id}",
                f"--log-error={self.lab.host_dir(self.host) / 'log' / (self.name + '.err')}",
                *self.options]
        self.lab.spawn(self.host, self.name, argv)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.exists() and self.sql("SELECT 1", check=False).returncode == 0:
                break
            if not self.lab.supervisor(self.host).running(self.name):
                raise BenchError(f"mariadbd {self.name} exited at start; see {self.error_log}")
            time.sleep(0.2)
        else:
            raise BenchError(f"mariadbd {self.name} did not come up in {timeout:.0f}s")
        anon = self.sql("SELECT CONCAT(\"'\", host, \"'\") FROM mysql.user WHERE user=''").stdout
        for host in anon.split():
            self.sql(f"DROP USER ''@{host}")
        self.sql("FLUSH PRIVILEGES")

    @property
    def error_log(self) -> Path:
        return self.lab.host_dir(self.host) / "log" / f"{self.name}.err"

    def sql(self, query: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot",
                               "-N", "-B", "-e", query],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise BenchError(f"{self.name}: {query[:60]}: {proc.stderr.strip()[-300:]}")
        return proc

    def status_var(self, name: str) -> str:
        out = self.sql(f"SHOW GLOBAL STATUS LIKE '{name}'").stdout.split()
        return out[1] if len(out) > 1 else ""

    def stop(self) -> None:
        if self.lab.supervisor(self.host).get(self.name):
            self.lab.stop(self.host, self.name, timeout=60)


def setup_semisync(master: MariaDB, replica: MariaDB, master_address: str,
                   timeout: float = 60) -> None:
    """Replica replicates from master (GTID), semi-sync acknowledged."""
    master.sql("CREATE USER 'repl'@'%' IDENTIFIED BY 'repl';"
               " GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'")
    replica.sql(f"CHANGE MASTER TO MASTER_HOST='{master_address}', MASTER_PORT={master.port},"
                " MASTER_USER='repl', MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos,"
                " MASTER_CONNECT_RETRY=1; START SLAVE")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if master.status_var("Rpl_semi_sync_master_clients") == "1":
            return
        time.sleep(0.2)
    detail = replica.sql("SHOW SLAVE STATUS\\G", check=False).stdout[-600:]
    raise BenchError(f"semi-sync replica did not connect: {detail}")


_TPS = re.compile(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec")
_LAT = re.compile(r"avg:\s+([\d.]+)")
_P95 = re.compile(r"95th percentile:\s+([\d.]+)")


def sysbench_args(db: MariaDB) -> list[str]:
    return ["--db-driver=mysql", f"--mysql-socket={db.socket}", "--mysql-user=root",
            "--mysql-db=sbtest", "--tables=1", "--table-size=10000"]


def sysbench_prepare(db: MariaDB) -> None:
    db.sql("CREATE DATABASE IF NOT EXISTS sbtest")
    proc = subprocess.run(["sysbench", "oltp_insert", *sysbench_args(db), "prepare"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise BenchError(f"sysbench prepare on {db.name}: {proc.stderr.strip()[-300:]}")


def sysbench_insert(db: MariaDB, threads: int, seconds: int) -> dict[str, float]:
    """oltp_insert (one autocommit INSERT per transaction): commits/s and latency."""
    proc = subprocess.run(["sysbench", "oltp_insert", *sysbench_args(db), f"--threads={threads}",
                           f"--time={seconds}", "--report-interval=0", "run"],
                          capture_output=True, text=True, timeout=seconds + 300)
    if proc.returncode != 0:
        raise BenchError(f"sysbench run on {db.name}: {proc.stderr.strip()[-300:]}")
    m = _TPS.search(proc.stdout)
    if not m:
        raise BenchError(f"sysbench output not understood: {proc.stdout[-300:]}")
    lat = _LAT.search(proc.stdout)
    p95 = _P95.search(proc.stdout)
    return {"commits": int(m.group(1)), "commits_per_s": float(m.group(2)),
            "latency_avg_ms": float(lat.group(1)) if lat else 0.0,
            "latency_p95_ms": float(p95.group(1)) if p95 else 0.0}
