"""mariadb on ext4 on loop on a file in a lab host: first start initialises the
datadir, the application user logs in over TCP with the password from the
secret file, data survives a stop/start and a SIGKILL (crash recovery), and a
killed mariadbd is seen by monitor."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from pathlib import Path

import pymysql
import pytest

from tandem.cluster.resources.unwritten import unwritten_ranges
from tests.cluster_resources.conftest import must, op, sparse_file

HOST = "node1"


@pytest.fixture
def db_setup(lab, resources):
    d = lab.host_dir(HOST)
    img = sparse_file(d / "data" / "db.img", 384 << 20)
    mnt = d / "data" / "db-mnt"
    fs = {"name": "dbfs", "device": str(img), "mountpoint": str(mnt), "run_dir": str(d / "run"),
          "mkfs": True}
    pw_file = d / "etc" / "db.password"
    password = secrets.token_urlsafe(18)
    pw_file.write_text(password + "\n")
    os.chmod(pw_file, 0o600)
    db = {"name": "db", "datadir": str(mnt / "mysql"), "require_mountpoint": str(mnt),
          "run_dir": str(d / "run"), "password_file": str(pw_file), "port": 3306,
          "buffer_pool_size": "64M", "log_file_size": "32M", "app_databases": ["app", "app_2"]}
    return fs, db, password


def connect(lab, password: str) -> pymysql.connections.Connection:
    return pymysql.connect(host=lab.address(HOST), port=3306, user="tandem", password=password,
                           connect_timeout=3, autocommit=True)


def rows(lab, password: str) -> list[int]:
    with connect(lab, password) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM app.t ORDER BY id")
        return [r[0] for r in cur.fetchall()]


def root_sql(lab, sql: str) -> str:
    """As root over the node-local socket (what the resource itself does)."""
    sock = lab.host_dir(HOST) / "run" / "db" / "server" / "mysqld.sock"
    return subprocess.run(["mariadb", "--no-defaults", f"--socket={sock}", "--user=root", "--batch",
                           "--skip-column-names"], input=sql, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def test_the_password_file_must_be_private_before_anything_else(tmp_path):
    """One rule for every secret file (tandem.secretfile): a short password in a file
    others can read is refused for being readable, first; errors stay ResourceErrors."""
    from tandem.cluster.resources.base import ResourceError
    from tandem.cluster.resources.mariadb import read_secret
    pw = tmp_path / "pw"
    pw.write_text("short\n")
    pw.chmod(0o640)
    with pytest.raises(ResourceError, match=r"^password file .* is readable by others \(chmod 600 it\)$"):
        read_secret(pw)
    pw.chmod(0o600)
    with pytest.raises(ResourceError, match="password too short"):
        read_secret(pw)
    pw.write_text("long-enough-password\n")
    assert read_secret(str(pw)) == b"long-enough-password"
    with pytest.raises(ResourceError, match="No such file or directory"):
        read_secret(tmp_path / "missing")


def test_refuses_without_the_filesystem(lab, db_setup):
    _, db, _ = db_setup
    out = op(lab, HOST, "mariadb", "start", db)
    assert not out["ok"] and "is not mounted: refusing" in out["message"]
    assert not os.path.exists(db["datadir"])


def test_init_start_query_stop_restart_keeps_data(lab, resources, db_setup):
    fs, db, password = db_setup
    resources.start(HOST, "filesystem", fs)
    first = resources.start(HOST, "mariadb", db)
    assert "initialised" in first["message"], first["message"]
    assert must(lab, HOST, "mariadb", "monitor", db)["message"].endswith("answers SELECT 1")
    # InnoDB preallocated its redo log; the start wrote it out, so that no commit's
    # fdatasync has an extent conversion to journal (one more replicated write).
    assert "redo log written out" in first["message"], first["message"]
    fd = os.open(Path(db["datadir"]) / "ib_logfile0", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 32 << 20  # made at install with the server's size
        assert unwritten_ranges(fd) == []
    finally:
        os.close(fd)

    with connect(lab, password) as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS app")  # made by the provisioning
        cur.execute("CREATE TABLE app.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute("INSERT INTO app.t VALUES (1), (2)")
        cur.execute("SELECT @@log_bin, @@sync_binlog, @@innodb_flush_log_at_trx_commit, @@innodb_doublewrite")
        assert cur.fetchone() == (1, 1, 1, 1)
    # no anonymous users
    assert root_sql(lab, "SELECT COUNT(*) FROM mysql.global_priv WHERE User=''").strip() == "0"
    with pytest.raises(pymysql.err.OperationalError):
        connect(lab, "wrong-" + password).close()
    # the password never reaches the logs
    run = lab.host_dir(HOST) / "run" / "db"
    assert all(password not in p.read_text(errors="replace") for p in run.glob("*.log"))

    stop = must(lab, HOST, "mariadb", "stop", db)
    assert "exited after SIGTERM" in stop["message"]
    assert op(lab, HOST, "mariadb", "monitor", db)["state"] == "stopped"
    # the whole stack down and up again, as on a switchover and back
    must(lab, HOST, "filesystem", "stop", fs)
    must(lab, HOST, "filesystem", "start", fs)
    again = must(lab, HOST, "mariadb", "start", db)
    assert "initialised" not in again["message"] and "redo log" not in again["message"]
    assert rows(lab, password) == [1, 2]

    # A killed mariadbd: monitor says FAILED; the next start recovers every committed row.
    with connect(lab, password) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO app.t VALUES (3)")
    pid = json.loads((run / "state.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # the mariadbd our resource started (pid from its state)
    for _ in range(100):
        mon = op(lab, HOST, "mariadb", "monitor", db)
        if not mon["ok"]:
            break
    assert mon["state"] == "failed" and f"pid {pid} is gone" in mon["message"], mon
    recovered = must(lab, HOST, "mariadb", "start", db)
    assert f"pid {pid}" not in recovered["message"]
    assert rows(lab, password) == [1, 2, 3]


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError(f"no Uid line for pid {pid}")


def test_mariadbd_runs_as_its_own_user_and_takes_over_a_datadir_root_owned(lab, resources, db_setup):
    """Not root: a flaw in the server, or an account that gains FILE, reaches the
    database's files and no others. A datadir an older version wrote as root, and
    root's files below a top that is the server's, are handed over at start; what
    the server's user could plant for root (a symlink for tmp/, for the agent's
    note in the datadir) is not followed; the resource's state stays root's; an
    unknown user is one line."""
    import pwd
    mysql = pwd.getpwnam("mysql")
    fs, db, password = db_setup
    resources.start(HOST, "filesystem", fs)
    resources.start(HOST, "mariadb", db)
    run = lab.host_dir(HOST) / "run" / "db"
    pid = json.loads((run / "state.json").read_text())["pid"]
    assert _uid_of(pid) == mysql.pw_uid
    assert (run / "state.json").stat().st_uid == 0
    assert (run / "server").stat().st_uid == mysql.pw_uid
    datadir = db["datadir"]
    others = [os.path.join(r, n) for r, ds, fs_ in os.walk(datadir) for n in ds + fs_
              if os.lstat(os.path.join(r, n)).st_uid != mysql.pw_uid]
    assert others == [os.path.join(datadir, ".tandem-provisioned")], others  # the agent's note
    with connect(lab, password) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE app.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute("INSERT INTO app.t VALUES (1)")
    must(lab, HOST, "mariadb", "stop", db)

    # as an older version left it: everything root's
    for r, ds, fs_ in os.walk(datadir):
        for n in ds + fs_:
            os.lchown(os.path.join(r, n), 0, 0)
    os.lchown(datadir, 0, 0)
    again = must(lab, HOST, "mariadb", "start", db)
    assert "handed over to mysql" in again["message"], again["message"]
    assert rows(lab, password) == [1]
    must(lab, HOST, "mariadb", "stop", db)
    # below a top that is the server's: what a server running as root made (an older
    # agent on the peer during a rolling upgrade, a restore by hand)
    app = os.path.join(datadir, "app")
    os.lchown(app, 0, 0)
    for n in os.listdir(app):
        os.lchown(os.path.join(app, n), 0, 0)
        os.chmod(os.path.join(app, n), 0o600)
    # and traps the server's user could set for root in the directories it owns
    victim = lab.host_dir(HOST) / "victim"
    victim.mkdir()
    (victim / "file").write_text("untouched\n")
    server_tmp = run / "server" / "tmp"
    os.rmdir(server_tmp)
    server_tmp.symlink_to(victim)
    marker = Path(datadir) / ".tandem-provisioned"
    marker.unlink()
    marker.symlink_to(victim / "file")
    must(lab, HOST, "mariadb", "start", db)
    with connect(lab, password) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO app.t VALUES (2)")  # app/ is the server's again
    assert rows(lab, password) == [1, 2]
    assert victim.stat().st_uid == 0 and (victim / "file").read_text() == "untouched\n"
    assert not server_tmp.is_symlink() and server_tmp.stat().st_uid == mysql.pw_uid
    assert not marker.is_symlink()
    must(lab, HOST, "mariadb", "stop", db)

    nobody = op(lab, HOST, "mariadb", "start", {**db, "run_as": "tandem_no_such_user"})
    assert not nobody["ok"]
    assert nobody["message"].startswith("run_as: there is no user 'tandem_no_such_user' on this node")
    assert "\n" not in nobody["message"]


def test_tls_the_server_takes_no_plain_tcp_client_and_shows_a_certificate_of_the_cluster_ca(
        lab, resources, db_setup, tmp_path):
    """[database] tls: mariadbd shows its host's certificate of the cluster PKI and
    refuses TCP clients without TLS (an attacker on the public network reads no rows
    and cannot strip the TLS offer: pymysql then refuses the server); a client
    checking against another CA refuses the server; the server's user reads its copy
    of the key and cannot change it; a missing key file is one line."""
    import grp
    import ssl

    from tandem.dcs import pki
    from tandem.mgmt.db import transport
    mysql = pwd_of("mysql")
    fs, db, password = db_setup
    tls_dir, other_dir = tmp_path / "pki", tmp_path / "other-pki"
    pki.init(tls_dir, "c1", {HOST: [lab.address(HOST)]}, db_hosts={HOST: [lab.address(HOST)]})
    pki.init(other_dir, "c2", {HOST: [lab.address(HOST)]}, db_hosts={HOST: [lab.address(HOST)]})
    mine = pki.HostTls.db_of(tls_dir, HOST)
    tls = {"tls_ca": str(mine.ca), "tls_cert": str(mine.cert), "tls_key": str(mine.key)}
    resources.start(HOST, "filesystem", fs)
    resources.start(HOST, "mariadb", {**db, **tls})
    assert must(lab, HOST, "mariadb", "monitor", {**db, **tls})["message"].endswith("answers SELECT 1")

    with pytest.raises(pymysql.err.OperationalError) as plain:
        pymysql.connect(host=lab.address(HOST), port=3306, user="tandem", password=password,
                        connect_timeout=3, ssl_disabled=True).close()
    # MariaDB answers "access denied" (MySQL: 3159, insecure transport); the same
    # credentials over TLS get in just below
    assert plain.value.args[0] in (1045, 3159), plain.value
    conn = pymysql.connect(host=lab.address(HOST), port=3306, user="tandem", password=password,
                           connect_timeout=3, autocommit=True, **transport(str(mine.ca)))
    with conn, conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert cur.fetchone()[1] in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(pymysql.err.OperationalError) as wrong:
        pymysql.connect(host=lab.address(HOST), port=3306, user="tandem", password=password,
                        connect_timeout=3, **transport(str(other_dir / "db-ca.crt"))).close()
    assert isinstance(wrong.value.__cause__ or wrong.value.__context__, ssl.SSLError) \
        or "CERTIFICATE_VERIFY_FAILED" in str(wrong.value), wrong.value

    copy = lab.host_dir(HOST) / "run" / "db" / "tls"
    key = copy / "server.key"
    assert key.read_bytes() == mine.key.read_bytes()  # the database's key, never etcd's
    assert key.read_bytes() != (tls_dir / f"{HOST}.key").read_bytes()
    with pytest.raises(pymysql.err.OperationalError):  # etcd's CA does not vouch for it
        pymysql.connect(host=lab.address(HOST), port=3306, user="tandem", password=password,
                        connect_timeout=3, **transport(str(tls_dir / "ca.crt"))).close()
    st, dst = key.stat(), copy.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, mysql.pw_gid, 0o640)
    assert (dst.st_uid, dst.st_gid, dst.st_mode & 0o777) == (0, mysql.pw_gid, 0o750)
    assert grp.getgrgid(st.st_gid).gr_name == grp.getgrgid(mysql.pw_gid).gr_name
    key_text = mine.key.read_text().splitlines()[1]
    run = lab.host_dir(HOST) / "run" / "db"
    assert all(key_text not in p.read_text(errors="replace") for p in run.glob("*.log"))
    must(lab, HOST, "mariadb", "stop", db)
    must(lab, HOST, "mariadb", "start", db)  # TLS off: no copy of the key left behind
    assert not copy.exists()
    with connect(lab, password) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    must(lab, HOST, "mariadb", "stop", db)

    gone = op(lab, HOST, "mariadb", "start", {**db, **tls, "tls_key": str(tmp_path / "no.key")})
    assert not gone["ok"] and "\n" not in gone["message"]
    assert gone["message"].startswith(f"TLS file {tmp_path / 'no.key'}: No such file or directory"), gone
    from pydantic import ValidationError

    from tandem.cluster.resources.config import MariaDBConfig
    with pytest.raises(ValidationError, match="tls_ca, tls_cert and tls_key go together"):
        MariaDBConfig(**{**db, "tls_ca": tls["tls_ca"]})


def pwd_of(name: str):
    import pwd
    return pwd.getpwnam(name)


def _denied(cur, sql: str) -> int:
    with pytest.raises(pymysql.err.MySQLError) as e:
        cur.execute(sql)
        cur.fetchall()
    return e.value.args[0]


def test_the_application_user_has_its_databases_and_nothing_on_the_server(lab, resources, db_setup):
    """With ALL ON *.* (the old grant) its password, held by every management server,
    read any file as root (the cluster secret with LOAD_FILE), wrote one with INTO
    OUTFILE, and could grant itself more through the mysql schema."""
    fs, db, password = db_setup
    resources.start(HOST, "filesystem", fs)
    resources.start(HOST, "mariadb", db)

    def check() -> None:
        with connect(lab, password) as conn, conn.cursor() as cur:
            cur.execute("SHOW GRANTS")
            grants = sorted(r[0] for r in cur.fetchall())
            assert [g.split(" TO ")[0] for g in grants] == [
                "GRANT ALL PRIVILEGES ON `app\\_2`.*", "GRANT ALL PRIVILEGES ON `app`.*",
                "GRANT USAGE ON *.*"], grants
            cur.execute("SELECT LOAD_FILE('/etc/hostname')")
            assert cur.fetchone() == (None,)
            cur.execute("CREATE TABLE IF NOT EXISTS app_2.t (id INT PRIMARY KEY)")  # its own: fine
            assert _denied(cur, "SELECT * FROM mysql.global_priv") == 1142
            assert _denied(cur, "CREATE DATABASE other") == 1044
            assert _denied(cur, "CREATE DATABASE appX2") == 1044  # `_` in a GRANT is a wildcard
            assert _denied(cur, f"SELECT 1 INTO OUTFILE '{lab.host_dir(HOST)}/out'") == 1227  # needs FILE
            assert _denied(cur, "GRANT ALL ON *.* TO CURRENT_USER") in (1044, 1045, 1227)
    check()
    # an older provisioning (ALL ON *.*) is narrowed at the next start
    must(lab, HOST, "mariadb", "stop", db)
    must(lab, HOST, "mariadb", "start", db)
    root_sql(lab, "GRANT ALL PRIVILEGES ON *.* TO 'tandem'@'%';")
    (lab.host_dir(HOST) / "data" / "db-mnt" / "mysql" / ".tandem-provisioned").write_text("old\n")
    with connect(lab, password) as conn, conn.cursor() as cur:
        cur.execute("SHOW GRANTS")  # the grant really was there
        assert any("ALL PRIVILEGES ON *.*" in r[0] for r in cur.fetchall())
    must(lab, HOST, "mariadb", "stop", db)
    must(lab, HOST, "mariadb", "start", db)
    check()


#: a fresh install needs 24 MiB for InnoDB (ibdata1, ibtmp1: 12 MiB each) plus the
#: redo log (log_file_size of db_setup: 32 MiB), then ~6 MiB of system tables: with
#: 2 MiB of those for mariadbd's user (ext4 keeps its reserved blocks for root) it
#: fails in them, or stalls (an Aria table waiting for space) until its timeout,
#: after it made mysql/
ROOM_FOR_INNODB_ONLY = (24 + 32 + 2) << 20


def test_an_install_that_dies_halfway_leaves_no_datadir_that_looks_initialised(
        lab, resources, db_setup):
    """Torture 140: mariadb-install-db crashed halfway at the cluster's first start,
    after it had made mysql/. The node that took over found that directory, took the
    datadir for initialised and started MariaDB on a half-built one, which never
    came up. Here the disk fills during the install (an error, or a stall that the
    start timeout ends); the datadir must not look initialised, and a start with
    room installs it whole."""
    fs, db, password = db_setup
    db = {**db, "start_timeout": 20}
    resources.start(HOST, "filesystem", fs)
    st = os.statvfs(fs["mountpoint"])
    ballast = os.path.join(fs["mountpoint"], "ballast")
    with open(ballast, "wb") as f:
        # what mariadbd (not root: ext4's reserved blocks are not its) may still use
        os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - ROOM_FOR_INNODB_ONLY)
    failed = op(lab, HOST, "mariadb", "start", db)
    assert not failed["ok"], failed["message"]
    assert "No space left" in failed["message"] or "timed out" in failed["message"], failed
    assert "initialising" in failed["message"], failed  # the install failed, not a later step
    assert not os.path.exists(os.path.join(db["datadir"], "mysql"))
    assert os.listdir(db["datadir"]) == []  # the staging directory went too
    os.unlink(ballast)
    again = must(lab, HOST, "mariadb", "start", db)
    assert "initialised" in again["message"], again["message"]
    # the table the full disk stalled in
    assert int(root_sql(lab, "SELECT COUNT(*) FROM mysql.help_topic")) > 0
    must(lab, HOST, "mariadb", "stop", db)


def test_old_binary_logs_expire_at_rotation(lab, resources, db_setup):
    """A lab campaign filled a 256 MiB volume with binary logs (one more per
    restart, none ever removed): MariaDB then could not start on either node."""
    import time
    fs, db, password = db_setup
    db = {**db, "binlog_expire_seconds": 2, "max_binlog_size": "4096"}
    resources.start(HOST, "filesystem", fs)
    resources.start(HOST, "mariadb", db)
    with connect(lab, password) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@binlog_expire_logs_seconds, @@max_binlog_size")
        assert cur.fetchone() == (2, 4096)
    first = root_sql(lab, "SHOW BINARY LOGS").split()[0]  # the app user may not (no BINLOG MONITOR)
    root_sql(lab, "FLUSH BINARY LOGS")
    time.sleep(3)
    names = root_sql(lab, "FLUSH BINARY LOGS; SHOW BINARY LOGS").split()  # rotation: logs older than 2 s go
    assert first.startswith("mariadb-bin.") and first not in names, names
    must(lab, HOST, "mariadb", "stop", db)


def _clear_in_use(binlog) -> bool:
    """What a graceful shutdown does to the binlog header as its last binlog step."""
    from tandem.cluster.resources.binlog import FLAGS_OFFSET, IN_USE
    with open(binlog, "r+b") as f:
        f.seek(FLAGS_OFFSET)
        flags = int.from_bytes(f.read(2), "little")
        f.seek(FLAGS_OFFSET)
        f.write((flags & ~IN_USE).to_bytes(2, "little"))
    return bool(flags & IN_USE)


def test_a_crash_during_shutdown_leaves_prepared_transactions_that_the_next_start_recovers(
        lab, resources, db_setup):
    """Campaign 107:77: the node died while mariadbd shut down, after it had
    closed the binlog cleanly but before InnoDB logged its last commits. Every
    later start failed ("Found 4 prepared transactions!"), on both nodes. We
    make that state by killing mariadbd under concurrent commits (InnoDB's
    commit records are not yet flushed; the binlog holds the transactions) and
    clearing the binlog's in-use flag as the shutdown had. The start must
    recover, and keep every acknowledged row."""
    import threading
    import time

    from tandem.cluster.resources.binlog import last_binlog
    fs, db, password = db_setup
    resources.start(HOST, "filesystem", fs)
    resources.start(HOST, "mariadb", db)
    with connect(lab, password) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE app.t (id INT PRIMARY KEY, w INT) ENGINE=InnoDB")
    run = lab.host_dir(HOST) / "run" / "db"
    acked: set[int] = set()
    recovered = 0
    for attempt in range(6):  # bounded: a kill does not always catch a commit half done
        stop = threading.Event()

        def writer(w: int, attempt: int = attempt, stop: threading.Event = stop) -> None:
            try:
                with connect(lab, password) as conn, conn.cursor() as cur:
                    for i in range(100_000):
                        if stop.is_set():
                            return
                        row = attempt * 10_000_000 + w * 1_000_000 + i
                        cur.execute("INSERT INTO app.t VALUES (%s, %s)", (row, w))
                        acked.add(row)
            except pymysql.err.MySQLError:
                return  # the kill

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.8)
        pid = json.loads((run / "state.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)  # the mariadbd our resource started
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        for _ in range(100):
            if not op(lab, HOST, "mariadb", "monitor", db)["ok"]:
                break
        binlog = last_binlog(lab.host_dir(HOST) / "data" / "db-mnt" / "mysql")
        assert _clear_in_use(binlog), "a killed mariadbd leaves its binlog marked in use"
        start = must(lab, HOST, "mariadb", "start", db)
        if "marked" in start["message"]:
            recovered += 1
            assert f"marked {binlog.name} in use" in start["message"], start["message"]
        assert set(rows(lab, password)) >= acked, sorted(acked - set(rows(lab, password)))[:10]
        if recovered >= 2:
            break
    assert recovered, "no kill left a prepared transaction: the case was never tried"


def test_a_replicated_filesystem_that_does_not_answer_leaves_the_event_loop_running(
        tmp_path, monkeypatch):
    """The start looks at the replicated filesystem (mounted? initialised? provisioned?).
    When its writes are held (the write lease ran out, a fence), even a lookup can wait in
    FUSE behind them. Made on the agent's event loop, that froze the agent, and with it
    the lease loop whose next push releases them (the likely cause of torture 279:164).
    Here the mount check hangs for a while: the loop keeps running meanwhile."""
    import asyncio
    import threading
    import time

    from tandem.cluster.resources.base import ResourceError
    from tandem.cluster.resources.config import MariaDBConfig
    from tandem.cluster.resources.mariadb import MariaDB

    pw = tmp_path / "db.password"
    pw.write_text(secrets.token_urlsafe(18) + "\n")
    os.chmod(pw, 0o600)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    db = MariaDB(MariaDBConfig(name="db", datadir=mnt / "mysql", require_mountpoint=mnt,
                               run_dir=tmp_path / "run", password_file=pw, app_databases=["app"]))
    answered = threading.Event()
    real_ismount = os.path.ismount

    def ismount(path):
        if str(path) == str(mnt):
            answered.wait(5)  # a lookup held in the kernel
            return False
        return real_ismount(path)

    monkeypatch.setattr(os.path, "ismount", ismount)

    async def scenario() -> int:
        ticks = 0

        async def lease_loop():  # what must not stop
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(lease_loop())
        start = asyncio.create_task(db._start())
        await asyncio.sleep(0.5)
        seen = ticks
        answered.set()
        with pytest.raises(ResourceError, match="not mounted"):
            await start
        ticker.cancel()
        return seen

    t0 = time.monotonic()
    seen = asyncio.run(scenario())
    assert seen >= 10, f"the event loop ran {seen} times in 0.5 s while the mount check hung"
    assert time.monotonic() - t0 < 5
