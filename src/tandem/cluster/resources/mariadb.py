"""MariaDB on the replicated filesystem, started and watched by the agent.

mariadbd runs as a child of the agent in its own session (the agent itself runs
inside the node's network namespace), remembered by pid + start time in a
node-local state file, so a restarted agent still finds and stops it, and a
recycled pid is never signalled. Everything that must not move with the data
(pid file, socket, log, tmpdir, state) lives in the node's run dir; only the
datadir is on the replicated disk.

Crash safety on our volume, option by option (``--no-defaults``, so nothing
from /etc/mysql sneaks in):

- ``innodb_flush_log_at_trx_commit=1`` and ``sync_binlog=1``: a COMMIT is
  acknowledged only after the redo log and the binlog are flushed, and a flush
  on ext4/loop/FUSE completes only when the peer has it too (protocol C).
- ``innodb_doublewrite=1``: InnoDB pages are 16 KiB, ext4 blocks 4 KiB, and
  loop/FUSE/replication may split a page write; a crash can tear a page, which
  the redo log cannot repair. The doublewrite buffer can.
- binlog on (``log_bin``, ROW, ``server_id``): with the binlog, InnoDB and the
  binlog agree after crash recovery (two-phase commit via the binlog), and
  the binlog is what point-in-time recovery or a later async replica needs.
- ``innodb_flush_method=O_DIRECT``: no second copy of the pool in ext4's page
  cache; data and log writes go straight to loop (fsync still follows).
- ``skip_name_resolve``: a DNS hiccup must not stall logins during failover.

First use initialises the datadir (``mariadb-install-db``, see :meth:`MariaDB._initialise`:
the datadir counts as initialised once it holds ``mysql/``, so that directory
arrives last, whole). Every start then
deletes anonymous users (they shadow '%' users on TCP logins) and creates or
updates the application user from the password file. The password never
reaches an argument list, a log or the binlog: we send only its
mysql_native_password hash, over stdin.

mariadbd runs as ``run_as`` (``mysql``), not root: a flaw in the server, or an
account that gains FILE, then reaches the database's own files and no others
(not the cluster's secrets, not the agent's state). That user owns the datadir
(what a server running as root left there, an older version's datadir or one
restored by hand, is handed over at every start: see `hand_over`) and ``server/`` in the
run dir (socket, pid file, tmpdir); the resource's state file and the server's
log stay root's.

``require_mountpoint`` guards the classic HA accident: when the replicated
filesystem is not mounted, a fresh empty datadir would be initialised on the
root disk and served as if it were the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import pwd
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tandem.cluster.resources.base import Health, Resource, ResourceError, run_cmd
from tandem.cluster.resources.binlog import PREPARED_AT_START, BinlogError, last_binlog, mark_in_use
from tandem.cluster.resources.config import MariaDBConfig
from tandem.cluster.resources.procs import ProcRef, spawn, tail, terminate
from tandem.cluster.resources.unwritten import write_out_unwritten
from tandem.errors import TandemError
from tandem.secretfile import read_private

CLIENT = "mariadb"
INSTALL_DB = "mariadb-install-db"
REDO_LOG = "ib_logfile0"
"""Preallocated by InnoDB; written out once, at the install (unwritten.py says why).
A log made anew by a changed ``log_file_size`` journals its extent conversions
until it has wrapped once: writing it out under a server, or beside a start, could
put zeros over redo records, so it is never done outside the install."""

log = logging.getLogger(__name__)
T = TypeVar("T")


def native_password_hash(password: bytes) -> str:
    """mysql_native_password's stored form: ``*`` + SHA1(SHA1(password)) in hex."""
    return "*" + hashlib.sha1(hashlib.sha1(password).digest()).hexdigest().upper()


def _accepts(sock: Path) -> bool:
    """True if something accepts connections on the Unix socket."""
    import socket as _socket
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(0.2)
    try:
        s.connect(str(sock))
        return True
    except OSError:
        return False
    finally:
        s.close()


def hand_over(path: Path, uid: int, gid: int) -> tuple[int, int | None]:
    """Make every entry under `path`, and `path`, belong to uid:gid. Returns how many
    changed, and the owner the top had if it was another non-root user (a datadir
    last run on a node whose server user has another uid).

    Every entry is looked at on every start, not only the top: a server that ran as
    root on this datadir (an older agent on the peer, during a rolling upgrade; a
    restore by hand) leaves files of root's below a top that is ours. Walks by
    directory descriptor and never follows a symlink, in a directory the server's
    user can change under us."""
    top = os.lstat(path)
    foreign = top.st_uid if top.st_uid not in (0, uid) else None
    changed = 0

    def fail(e: OSError) -> None:
        raise e

    for _, dirs, files, dfd in os.fwalk(path, onerror=fail, follow_symlinks=False):
        for name in dirs + files:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
                changed += 1
    if (top.st_uid, top.st_gid) != (uid, gid):
        os.lchown(path, uid, gid)
        changed += 1
    return changed, foreign


_DATADIR_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="datadir")


async def _off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Whatever touches the replicated filesystem runs in a thread, never on the
    agent's event loop. Its writes may be held (the write lease run out under load,
    a fence), and then even a lookup can wait in FUSE behind them: on the loop, that
    froze the whole agent, and with it the lease loop whose next push is what
    releases them (the likely cause of torture 279:164: node2 Offline for 120 s).
    A call stuck in the kernel keeps its thread (the start's timeout ends the wait,
    not the call): they have a pool of their own, so that others are not starved."""
    return await asyncio.get_running_loop().run_in_executor(
        _DATADIR_POOL, functools.partial(fn, *args, **kwargs))


def _read_note(path: Path) -> str | None:
    """A small file of ours in a directory the server's user owns: read as root only
    if it is a plain file (a symlink or a FIFO there is refused, not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(4096).decode(errors="replace")


def _write_note(path: Path, text: str) -> None:
    """Write it whole under a new name, then rename over whatever is there (a rename
    replaces a symlink; it never writes through one)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_INSTALL_LOCK = threading.Lock()
"""Held by a move-up from start to end, and taken by a new staging directory: a
start cancelled while its thread still writes out or moves the install (the volume
slow, or its writes held) must not have a retried start put a new staging
directory, with a half-made install in it, under that thread's feet."""
INSTALL_WAIT = 30.0  # seconds a new install waits for an earlier one's move-up


def _new_staging(datadir: Path, staging: Path, uid: int, gid: int) -> bool:
    """A fresh staging directory; False if an earlier start's move-up, waited for
    here, has initialised the datadir meanwhile."""
    if not _INSTALL_LOCK.acquire(timeout=INSTALL_WAIT):
        raise ResourceError(f"an earlier install into {datadir} is still moving its files after"
                            f" {INSTALL_WAIT:.0f} s (is the volume's I/O held?)")
    try:
        if (datadir / "mysql").is_dir():
            return False
        datadir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # a start that died before
        staging.mkdir()
        os.lchown(staging, uid, gid)
        return True
    finally:
        _INSTALL_LOCK.release()


def _write_out_redo_log(staging: Path) -> int:
    try:
        return write_out_unwritten(staging / REDO_LOG)
    except OSError as e:
        log.warning("could not write out the preallocated redo log %s (commits will journal"
                    " its extent conversions until it wraps): %s", staging / REDO_LOG, e)
        return 0


def _move_up(staging: Path, datadir: Path) -> int:
    """The installed files into the datadir, ``mysql/`` last, then made durable; the
    staging directory goes in the end, whatever happened (in this thread: a start
    cancelled meanwhile must not remove it while its files are being moved).

    First the fresh redo log's preallocated extents are written out (REDO_LOG):
    here, on the staging copy, no server can have the file open, and a start
    cancelled meanwhile cannot spawn one beside this thread. Only a speed-up: an
    error is logged, not raised. Returns the bytes written out."""
    with _INSTALL_LOCK:
        try:
            converted = _write_out_redo_log(staging)
            for entry in sorted(staging.iterdir(), key=lambda e: e.name == "mysql"):
                target = datadir / entry.name
                if target.is_dir() and not target.is_symlink():  # left by an install before
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.rename(entry, target)
            fd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return converted
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def read_secret(path: os.PathLike[str] | str) -> bytes:
    """The application user's password: private (secretfile's rule) and long enough."""
    try:
        data = read_private(Path(path), "password file")
    except TandemError as e:
        raise ResourceError(str(e)) from None
    if len(data) < 8:
        raise ResourceError(f"password file {path}: password too short (need at least 8 bytes)")
    return data


class MariaDB(Resource):
    kind = "mariadb"
    config: MariaDBConfig

    @property
    def server_dir(self) -> Path:
        """The one node-local directory mariadbd may write: socket, pid file, tmpdir."""
        return self.private_dir / "server"

    @property
    def socket(self) -> str:
        sock = self.server_dir / "mysqld.sock"
        old = self.private_dir / "mysqld.sock"
        if not sock.exists() and old.exists():  # a server an older agent started, as root
            return str(old)
        return str(sock)

    @property
    def log(self):
        return self.private_dir / "mariadbd.log"

    def _ref(self) -> ProcRef | None:
        st = self.load_state()
        return ProcRef.from_json(st) if st else None

    def argv(self) -> list[str]:
        c = self.config
        d = self.server_dir
        return [
            c.mariadbd, "--no-defaults", f"--datadir={c.datadir}", f"--user={c.run_as}",
            f"--socket={d / 'mysqld.sock'}", f"--pid-file={d / 'mariadbd.pid'}", f"--tmpdir={d / 'tmp'}",
            f"--bind-address={c.bind_address}", f"--port={c.port}", "--skip-name-resolve",
            # LOAD_FILE / INTO OUTFILE only in an empty node-local directory (root's:
            # the server cannot write there), should any account ever hold FILE
            f"--secure-file-priv={self.private_dir / 'files'}",
            "--log-bin=mariadb-bin", "--server-id=1", "--binlog-format=ROW", "--sync-binlog=1",
            f"--binlog-expire-logs-seconds={c.binlog_expire_seconds}",
            f"--max-binlog-size={c.max_binlog_size}",
            "--innodb-flush-log-at-trx-commit=1", "--innodb-doublewrite=1",
            "--innodb-flush-method=O_DIRECT", f"--innodb-buffer-pool-size={c.buffer_pool_size}",
            f"--innodb-log-file-size={c.log_file_size}", f"--max-connections={c.max_connections}",
            *self._tls_argv(),
            *c.extra_options,
        ]

    def _log_file_size(self) -> str:
        """The redo log size the server will use: extra_options may name its own."""
        size = self.config.log_file_size
        for opt in self.config.extra_options:
            name, _, value = opt.partition("=")
            if name.replace("_", "-") == "--innodb-log-file-size" and value:
                size = value
        return size

    @property
    def tls_dir(self) -> Path:
        """The server's copy of its TLS files: root's, readable by the server's group."""
        return self.private_dir / "tls"

    def _tls_argv(self) -> list[str]:
        if self.config.tls_ca is None:
            return []
        d = self.tls_dir
        # A unix socket counts as secure: the agent's own client needs no certificate.
        return [f"--ssl-ca={d / 'ca.crt'}", f"--ssl-cert={d / 'server.crt'}", f"--ssl-key={d / 'server.key'}",
                "--require-secure-transport=ON", "--tls-version=TLSv1.2,TLSv1.3"]

    def _prepare_tls(self, gid: int) -> None:
        """Copy the node's database certificate and key where the server's user can read
        them and not change them (the key is root's, mode 600, where the PKI keeps it).
        They are the database CA's, never etcd's (tandem.dcs.pki.init_db). Copied at
        every start: a renewed certificate is taken at the next one."""
        c = self.config
        d = self.tls_dir
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            d.unlink()
        if c.tls_ca is None or c.tls_cert is None or c.tls_key is None:
            shutil.rmtree(d, ignore_errors=True)  # no key copy left behind with TLS off
            return
        d.mkdir(mode=0o750, exist_ok=True)
        os.chown(d, 0, gid, follow_symlinks=False)
        os.chmod(d, 0o750, follow_symlinks=False)
        for stale in d.glob(".*.tmp"):  # a copy cut short, by an agent with another pid
            stale.unlink(missing_ok=True)
        for src, name in ((c.tls_ca, "ca.crt"), (c.tls_cert, "server.crt"), (c.tls_key, "server.key")):
            try:
                data = src.read_bytes()
            except OSError as e:
                raise ResourceError(f"TLS file {src}: {e.strerror}: the host's PKI files must be"
                                    " readable by root (`tandem pki init` makes them)") from None
            tmp = d / f".{name}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.fchown(fd, 0, gid)
                os.fchmod(fd, 0o640)
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, d / name)

    async def sql(self, statements: str, timeout: float) -> str:
        """Run SQL as root over the unix socket with the mariadb client (a
        killable subprocess: a stuck server cannot stall the event loop)."""
        res = await run_cmd([CLIENT, "--no-defaults", "--protocol=socket", f"--socket={self.socket}",
                             "--user=root", "--connect-timeout=2", "--batch", "--skip-column-names"],
                            timeout=timeout, input=statements.encode(), check=False)
        if res.returncode != 0:
            raise ResourceError(f"query failed: {res.last_line}")
        return res.output

    # --- start -----------------------------------------------------------------------
    async def _start(self) -> str:
        c = self.config
        ref = self._ref()
        if ref is not None and ref.alive():
            await self.sql("SELECT 1", timeout=c.monitor_timeout)
            return f"already running (pid {ref.pid})"
        if c.require_mountpoint is not None and not await _off_loop(os.path.ismount,
                                                                     c.require_mountpoint):
            raise ResourceError(f"{c.require_mountpoint} is not mounted: refusing to start MariaDB"
                                " (it would serve an empty datadir from the wrong disk)")
        password = read_secret(c.password_file)
        uid, gid = self._service_user()
        steps = []
        if not await _off_loop((c.datadir / "mysql").is_dir):
            t0 = time.monotonic()
            converted = await self._initialise(uid, gid)
            steps.append(f"initialised {c.datadir} in {time.monotonic() - t0:.1f} s")
            if converted:
                steps.append(f"redo log written out ({converted / (1 << 20):.0f} MiB of preallocation)")
        handed, foreign = await _off_loop(hand_over, c.datadir, uid, gid)
        if foreign is not None:
            log.error("datadir %s belonged to uid %d, not %s (uid %d): the server's user must have"
                      " the same uid and gid on every node, or each failover re-owns every file",
                      c.datadir, foreign, c.run_as, uid)
        if handed:
            log.warning("datadir %s: %d entries handed over to user %s", c.datadir, handed, c.run_as)
            steps.append(f"datadir handed over to {c.run_as} ({handed} entries)")
        t0 = time.monotonic()
        try:
            ref = await self._spawn_and_wait()
        except ResourceError as e:
            if PREPARED_AT_START not in str(e):
                raise
            steps.append(await _off_loop(self._recover_prepared))
            ref = await self._spawn_and_wait()
        await self._provision(password)
        steps.append(f"mariadbd pid {ref.pid} answering on {c.bind_address}:{c.port}"
                     f" after {time.monotonic() - t0:.1f} s")
        return ", ".join(steps)

    def _service_user(self) -> tuple[int, int]:
        name = self.config.run_as
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise ResourceError(f"run_as: there is no user {name!r} on this node (the mariadb-server"
                                " package creates 'mysql'; or name an existing system user)") from None
        return pw.pw_uid, pw.pw_gid

    async def _initialise(self, uid: int, gid: int) -> int:
        """mariadb-install-db into a hidden directory inside the datadir (the same
        filesystem), then its files moved up, ``mysql/`` last.

        Torture 140: the install crashed halfway on node1 at the cluster's first
        start, after it had made ``mysql/``. node2 took over, found that directory,
        took the datadir for initialised and started MariaDB on a half-built one;
        the database never came up. An install that dies now leaves no ``mysql/``,
        and the next start (here or on the peer) installs again."""
        c = self.config
        staging = c.datadir / ".tandem-install"
        if not await _off_loop(_new_staging, c.datadir, staging, uid, gid):
            return 0  # an earlier start's install ended meanwhile
        moving = False
        try:
            try:
                # within the start's own timeout, so that a stalled install (an Aria
                # table waiting for space) is reported as what it is
                res = await run_cmd([INSTALL_DB, "--no-defaults", f"--datadir={staging}",
                                     f"--user={c.run_as}", "--auth-root-authentication-method=normal",
                                     "--skip-test-db",
                                     # the server's own size: its first start does not
                                     # make the log anew (preallocated, see REDO_LOG)
                                     f"--innodb-log-file-size={self._log_file_size()}"],
                                    timeout=max(1.0, c.start_timeout - min(5.0, c.start_timeout / 4)),
                                    check=False)
            except ResourceError as e:
                raise ResourceError(f"{e} initialising {c.datadir}") from None
            if res.returncode != 0:
                # Its last lines are a page of advice; what went wrong is in mariadbd's.
                lines = [ln.strip() for ln in res.output.splitlines() if ln.strip()]
                errors = [ln for ln in lines if "[ERROR]" in ln or ln.startswith("ERROR")][:3]
                errors = errors or lines[-2:]
                raise ResourceError(f"{INSTALL_DB} failed (exit {res.returncode}) initialising"
                                    f" {c.datadir}: {' | '.join(errors)}")
            moving = True  # from here its thread cleans up: never beside the move
            return await _off_loop(_move_up, staging, c.datadir)
        finally:
            if not moving:
                await _off_loop(shutil.rmtree, staging, ignore_errors=True)

    async def _spawn_and_wait(self) -> ProcRef:
        uid, gid = self._service_user()
        for stale in ("mysqld.sock", "mysqld.sock.lock", "mariadbd.pid"):
            (self.server_dir / stale).unlink(missing_ok=True)
            (self.private_dir / stale).unlink(missing_ok=True)  # an older agent's
        self._prepare_server_dir(uid, gid)
        self._prepare_tls(gid)
        ref = spawn(self.argv(), self.log)
        self.save_state(ref.to_json())
        await self._wait_ready(ref)
        return ref

    def _prepare_server_dir(self, uid: int, gid: int) -> None:
        """server/ and its tmp/ for the server's user. What that user left in server/
        is not trusted: tmp/ is made anew, so a symlink there (to /etc, say) is
        removed, not chowned through."""
        private, d = self.private_dir, self.server_dir
        # the server's user must reach server/ whatever root's umask made of this, and
        # never write here (root writes tls/ and the state here)
        os.chmod(private, (os.lstat(private).st_mode & 0o755) | 0o011)
        (private / "files").mkdir(exist_ok=True)
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            d.unlink()
        d.mkdir(exist_ok=True)
        os.lchown(d, uid, gid)
        os.chmod(d, 0o750)
        tmp = d / "tmp"
        if tmp.is_symlink() or (tmp.exists() and not tmp.is_dir()):
            tmp.unlink()
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        os.lchown(tmp, uid, gid)

    def _recover_prepared(self) -> str:
        """mariadbd found XA-prepared transactions and a cleanly closed binlog
        (a crash during its own shutdown): mark the binlog in use, so the next
        start recovers from it (see `binlog`)."""
        try:
            path = last_binlog(self.config.datadir)
            mark_in_use(path)
        except BinlogError as e:
            raise ResourceError(f"mariadbd found prepared transactions and the binlog cannot be"
                                f" marked for crash recovery: {e}") from None
        what = (f"mariadbd found prepared transactions after a crash during shutdown:"
                f" marked {path.name} in use so that it recovers them from the binlog")
        log.warning("%s", what)
        return what

    async def _wait_ready(self, ref: ProcRef) -> None:
        sock = self.server_dir / "mysqld.sock"
        while True:
            if not ref.alive():
                self.clear_state()
                raise ResourceError(f"mariadbd exited during startup: {tail(self.log, 3)}")
            if not _accepts(sock):  # cheap probe first: a client process costs ~50 ms
                await asyncio.sleep(0.02)
                continue
            try:
                await self.sql("SELECT 1", timeout=5)
                return
            except ResourceError:
                await asyncio.sleep(0.1)

    async def _provision(self, password: bytes) -> None:
        """Users as configured. Skipped when the datadir (which travels with the
        volume) records that exactly this was done: it costs a client process and
        a few hundred ms of every failover.

        The application user gets its own databases and nothing on the server: with
        ALL ON *.* (as before) anyone holding its password, which every management
        server does and which crosses the network, could read any file as root
        (LOAD_FILE of the cluster secret), write one (INTO OUTFILE) or grant itself
        more through the ``mysql`` schema."""
        c = self.config
        user = f"'{c.app_user}'@'{c.app_host}'"
        pw = native_password_hash(password)
        statements = (
            # no anonymous users; passwordless root only over the node-local socket
            "DELETE FROM mysql.global_priv WHERE User='' OR (User='root' AND Host<>'localhost');\n"
            "FLUSH PRIVILEGES;\n"
            f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY PASSWORD '{pw}';\n"
            f"ALTER USER {user} IDENTIFIED BY PASSWORD '{pw}';\n"
            # what an older provisioning or a hand granted beyond the databases goes
            f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {user};\n"
            + "".join(f"CREATE DATABASE IF NOT EXISTS `{name}`;\n"
                      # in a GRANT, _ is a wildcard: cloud_usage would match cloudXusage
                      f"GRANT ALL PRIVILEGES ON `{name.replace('_', chr(92) + '_')}`.* TO {user};\n"
                      for name in c.app_databases))
        marker = c.datadir / ".tandem-provisioned"
        want = hashlib.sha256(statements.encode()).hexdigest()
        if (await _off_loop(_read_note, marker) or "").strip() == want:
            return
        await self.sql(statements, timeout=30)
        with contextlib.suppress(OSError):
            await _off_loop(_write_note, marker, want + "\n")

    # --- stop / monitor ------------------------------------------------------------------
    async def _stop(self) -> str:
        ref = self._ref()
        if ref is None:
            return "was not running"
        # Leave 5 s of the stop timeout for SIGKILL and the kernel's cleanup.
        grace = max(1.0, self.config.stop_timeout - 5)
        t0 = time.monotonic()
        how = await terminate(ref, grace, signal.SIGTERM)
        if ref.alive():
            raise ResourceError(f"mariadbd pid {ref.pid} {how}")
        self.clear_state()
        return f"mariadbd pid {ref.pid} {how} in {time.monotonic() - t0:.1f} s"

    async def _monitor(self) -> Health:
        ref = self._ref()
        if ref is None:
            return Health.stopped("not started")
        if not ref.alive():
            return Health.failed(f"mariadbd pid {ref.pid} is gone: {tail(self.log, 1)}")
        out = await self.sql("SELECT 1", timeout=self.config.monitor_timeout)
        if out.strip() != "1":
            return Health.failed(f"SELECT 1 returned {out.strip()[:60]!r}")
        return Health.ok(f"pid {ref.pid} answers SELECT 1")
