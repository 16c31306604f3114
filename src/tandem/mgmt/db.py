"""The one door to MariaDB: a small connection pool whose calls survive a
database failover.

The management servers reach MariaDB through a VIP that moves when the database
fails over. A request in flight then sees its connection break; the right answer
for the client is a little latency, not an error. So every call goes through
`Database.read` or `Database.write`, which retry on connection-level errors for a
bounded time (the *retry budget*, default 8 s) — but only when retrying cannot
apply a change twice:

- reads are always safe to repeat;
- a write transaction that broke *before* COMMIT was sent was rolled back by the
  server, so it is repeated from the start;
- a write that broke *during* COMMIT has an unknown outcome. Unless the caller
  declared it idempotent, the transaction also inserted a unique marker row, and
  the layer looks that marker up on a fresh connection to learn whether the
  commit happened, instead of guessing.

The bound is the budget plus at most one I/O timeout (5 s): a connection to a
host that vanished without a reset hangs until then.

Blocking pymysql calls run on a thread pool, so the asyncio loop never waits on
the database. The password is held in memory only and never appears in a repr
or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pymysql
import pymysql.cursors

from tandem.errors import TandemError

log = logging.getLogger("tandem.mgmt.db")

T = TypeVar("T")
Cursor = pymysql.cursors.DictCursor

# Errors that mean "the connection (or the server behind it) went away", plus the
# ones that roll a transaction back and say "try again".
CONNECTION_ERRNOS = {2002, 2003, 2006, 2013, 2014, 2055, 1053, 1927, 1040, 1290, 1836, 4031}
ROLLED_BACK_ERRNOS = {1205, 1213}
# The server answered, but its storage failed: disk full, error reading or writing
# a file, an engine error, an error during COMMIT. Our database lives on a
# replicated volume, and these are what a failing disk looks like from a client
# just before the agent moves the database away (torture 52/53: a job's guard
# query got 1024 "Error reading file" from a Primary whose disk had failed). Not
# a verdict on the request: like a lost connection, it is repeated within the
# budget, and a COMMIT that fails this way has an unknown outcome.
STORAGE_ERRNOS = {1021, 1024, 1026, 1030, 1180}
# Below 1000: the server's own file layer (mysys) failed and passed its error on as
# is: 3 "Error writing file", 27 "Can't sync file" (a binlog fsync at COMMIT on a
# failing disk: the transaction is already prepared and in the binlog, and the next
# primary's recovery may commit it). The campaign logs held 40 of these at COMMIT,
# each answered as a plain failure (review 23): storage errors, like those above.
MYSYS_ERRNO_LIMIT = 1000
# A value the columns' character set cannot hold: compared with a column ("illegal
# mix of collations") or, in strict mode, stored ("incorrect string value"). Our
# tables are utf8mb4 since migration 8, which holds any text the API lets in; a
# schema older than that (a server started with --no-migrate) took the server's
# default, latin1. A verdict on the value, not on the database; the transaction
# stays usable.
CHARSET_ERRNOS = {1267, 1270, 1271, 1366}


class DbUnavailable(TandemError):
    """The database could not be reached within the retry budget."""


class DbOutcomeUnknown(DbUnavailable):
    """A COMMIT was sent, its answer lost, and the database could not be asked
    within the retry budget whether it went through: the change may have been
    made. Told apart so that a client is not invited to repeat it blindly (a job
    accepted twice, two VMs for one deploy)."""


@dataclass(frozen=True)
class DbUrl:
    """Where the database is: parsed from `mysql://user:pass@host:port/db`."""

    host: str
    port: int
    user: str
    database: str
    password: str = field(default="", repr=False)
    unix_socket: str | None = None
    #: TLS: the CA file the server's certificate must come from (`?ssl-ca=PATH`, as in
    #: MySQL's URIs); None: plain TCP
    ssl_ca: str | None = None

    @classmethod
    def parse(cls, url: str, password: str | None = None) -> DbUrl:
        usage = "--db: expected mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?ssl-ca=CA_FILE]"
        try:
            parts = urlsplit(url)
            port = parts.port  # raises on a port that is not a number in 0-65535
        except ValueError as e:
            raise TandemError(f"{usage} ({e})") from None
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname or not parts.path.strip("/"):
            raise TandemError(usage)
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        unknown = sorted(set(query) - {"ssl-ca"})
        if unknown or len(query.get("ssl-ca", [])) > 1 or query.get("ssl-ca") == [""]:
            raise TandemError(f"--db: unknown or repeated option {', '.join(unknown) or 'ssl-ca'!s}"
                              " (the one option is ?ssl-ca=CA_FILE, for TLS)")
        pw = password if password is not None else unquote(parts.password or "")
        return cls(host=parts.hostname, port=port or 3306, user=unquote(parts.username or "root"),
                   database=parts.path.strip("/"), password=pw, ssl_ca=(query.get("ssl-ca") or [None])[0])

    def safe(self) -> str:
        """The URL without its password, fit for logs, messages and a command line
        (the password goes by file); `parse` reads it back."""
        tls = f"?ssl-ca={quote(self.ssl_ca, safe='/')}" if self.ssl_ca else ""
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}{tls}"


def is_connection_error(e: BaseException) -> bool:
    if isinstance(e, pymysql.err.InterfaceError):
        return True
    if isinstance(e, pymysql.err.OperationalError | pymysql.err.InternalError) and e.args:
        return e.args[0] in CONNECTION_ERRNOS
    return isinstance(e, ConnectionError | TimeoutError | BrokenPipeError)


def is_storage_error(e: BaseException) -> bool:
    if not (isinstance(e, pymysql.err.OperationalError | pymysql.err.InternalError) and e.args
            and isinstance(e.args[0], int)):
        return False
    return e.args[0] in STORAGE_ERRNOS or 0 < e.args[0] < MYSYS_ERRNO_LIMIT


def is_charset_error(e: BaseException) -> bool:
    return isinstance(e, pymysql.err.MySQLError) and bool(e.args) and e.args[0] in CHARSET_ERRNOS


def is_transient(e: BaseException) -> bool:
    """Worth repeating: the connection, the server's storage or a lock wait failed."""
    return is_connection_error(e) or is_storage_error(e) or is_rolled_back(e)


def is_rolled_back(e: BaseException) -> bool:
    return isinstance(e, pymysql.err.OperationalError) and bool(e.args) and e.args[0] in ROLLED_BACK_ERRNOS


IDLE_TRANSACTION_TIMEOUT = 10
"""Seconds a session of ours may sit idle inside a transaction before the server ends
it (and releases its locks). Our transactions run their statements back to back."""


class _CommitUnknown(Exception):
    """COMMIT was sent but no answer came back."""


#: pymysql's default, "TLS if the server offers it", builds an SSL context per
#: connection -- loading every system CA: 30-150 ms of CPU -- and falls back to plain
#: TCP when a man in the middle strips the offer. With haproxy probing /health four
#: times a second that was most of a management server's CPU. Say what the link is
#: instead: plain, or TLS with one context made once (`transport`).
PLAIN_TCP = {"ssl_disabled": True}


def tls_context(ca: str) -> ssl.SSLContext:
    """TLS to MariaDB, whose certificate must come from the cluster's database CA. The
    name in it is not checked: clients dial the DB VIP, which no certificate names;
    that CA signs the data nodes' database certificates and nothing else."""
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise TandemError(f"--db ssl-ca {ca}: cannot load the CA ({getattr(e, 'strerror', None) or e}):"
                          " give the cluster's db-ca.crt ([etcd] tls_dir)") from None
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)  # Python 3.13 sets it (as pymysql)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


_TLS_CONTEXTS: dict[tuple[str, int, int], ssl.SSLContext] = {}
_TLS_LOCK = threading.Lock()


def transport(ssl_ca: str | None) -> dict[str, Any]:
    """pymysql.connect's arguments for the link: plain TCP, or TLS required (pymysql
    refuses a server that does not offer it) with a context made once per CA file
    (made again when the file is replaced)."""
    if not ssl_ca:
        return dict(PLAIN_TCP)
    try:
        st = os.stat(ssl_ca)
        key = (ssl_ca, st.st_ino, st.st_mtime_ns)
    except OSError:
        key = (ssl_ca, 0, 0)  # tls_context says what is wrong
    with _TLS_LOCK:
        ctx = _TLS_CONTEXTS.get(key)
        if ctx is None:
            ctx = _TLS_CONTEXTS[key] = tls_context(ssl_ca)
    return {"ssl": ctx}


class Database:
    """A pool of pymysql connections and the retry policy around them."""

    def __init__(self, url: DbUrl, *, retry_budget: float = 8.0, pool_size: int = 8,
                 connect_timeout: float = 2.0, io_timeout: float = 5.0):
        self.url = url
        self._transport = transport(url.ssl_ca)  # a CA that cannot be read fails here, once
        self.retry_budget = retry_budget
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self._idle: queue.LifoQueue[pymysql.connections.Connection] = queue.LifoQueue()
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="tandem-db")
        #: the job manager's heartbeat and takeover, apart from the requests' work: behind
        #: a queue of API calls (a flood of logins, each a durable write, or calls waiting
        #: on a paused peer's row locks) the beat came late enough for the server to
        #: fence itself and its peers to take its jobs over (review 23). One thread for
        #: the beat, one for takeover and housekeeping.
        self._lease_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tandem-db-lease")
        self._lock = threading.Lock()
        self.retries = 0  # connection-level retries so far, for tests and status

    def __repr__(self) -> str:
        return f"Database({self.url.safe()})"

    # -- connections -------------------------------------------------------------
    def connect(self, database: bool = True,
                io_timeout: float | None = None) -> pymysql.connections.Connection:
        io_timeout = self.io_timeout if io_timeout is None else io_timeout
        return pymysql.connect(
            host=self.url.host, port=self.url.port, user=self.url.user, password=self.url.password,
            database=self.url.database if database else None, unix_socket=self.url.unix_socket,
            autocommit=True, charset="utf8mb4", cursorclass=Cursor,
            connect_timeout=max(1, int(self.connect_timeout)),
            read_timeout=io_timeout, write_timeout=io_timeout,
            # Short lock waits: our transactions are short, and a timeout is retried.
            # idle_transaction_timeout: the server ends a session of ours that sits in
            # an open transaction (our transactions never wait on the client): a
            # server that lost power mid-transaction sends no FIN, and its row locks
            # held up every takeover of its jobs until TCP gave up, hours later.
            init_command="SET SESSION tx_isolation='READ-COMMITTED', SESSION time_zone='+00:00',"
                         " SESSION innodb_lock_wait_timeout=5,"
                         f" SESSION idle_transaction_timeout={IDLE_TRANSACTION_TIMEOUT}",
            **self._transport,
        )

    def _take(self) -> pymysql.connections.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self.connect()

    def _give(self, conn: pymysql.connections.Connection) -> None:
        self._idle.put(conn)

    def connect_retrying(self, io_timeout: float | None = None) -> pymysql.connections.Connection:
        """A new connection of the caller's own, found within the retry budget."""
        for _ in self._attempts("connect"):
            try:
                return self.connect(io_timeout=io_timeout)
            except Exception as e:
                if not is_connection_error(e):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(Exception):  # closing a broken connection
                conn.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._lease_executor.shutdown(wait=False, cancel_futures=True)

    # -- the retry loop ------------------------------------------------------------
    def _attempts(self, what: str):
        """Yield attempt numbers until the budget is spent; sleep between them."""
        deadline = time.monotonic() + self.retry_budget
        delay = 0.05
        attempt = 0
        while True:
            yield attempt
            attempt += 1
            self.retries += 1
            if time.monotonic() + delay > deadline:
                raise DbUnavailable(f"database {self.url.safe()} unreachable for {self.retry_budget:.0f} s"
                                    f" ({what})")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def read_sync(self, fn: Callable[[Cursor], T]) -> T:
        """Run `fn(cursor)` outside any transaction; repeat it on connection loss."""
        last: BaseException | None = None
        for _ in self._attempts("read"):
            conn = None
            try:
                conn = self._take()
                with conn.cursor() as cur:
                    result = fn(cur)
                self._give(conn)
                return result
            except Exception as e:
                _discard(conn)
                if not is_transient(e):
                    raise
                if last is None:
                    log.warning("db read failed, retrying for up to %.0f s: %s", self.retry_budget,
                                _errtext(e))
                last = e
        raise AssertionError(last)  # pragma: no cover - _attempts raises first

    def write_sync(self, fn: Callable[[Cursor], T], *, idempotent: bool = False) -> T:
        """Run `fn(cursor)` in one transaction and commit it exactly once.

        `fn` may be called several times (each time in a fresh transaction) but its
        changes are committed once. Set `idempotent` when committing twice would be
        harmless; otherwise a marker row makes an unknown COMMIT outcome checkable.
        """
        marker = None if idempotent else secrets.token_hex(16)
        attempts = self._attempts("write")
        for attempt in attempts:
            conn = None
            try:
                conn = self._take()
                conn.begin()
                with conn.cursor() as cur:
                    result = fn(cur)
                    if marker:
                        cur.execute("INSERT INTO txn_marker (id) VALUES (%s)", (marker,))
                try:
                    conn.commit()
                except Exception as e:
                    if is_connection_error(e) or is_storage_error(e):
                        raise _CommitUnknown() from e
                    raise
                self._give(conn)
                return result
            except _CommitUnknown as e:
                _discard(conn)
                log.warning("db commit outcome unknown: %s", _errtext(e.__cause__))
                if marker is None:
                    # Idempotent: committing again is harmless.
                    continue
                if self._marker_committed(marker, attempts):
                    return result
            except Exception as e:
                _discard(conn)
                if not is_transient(e):
                    raise
                if attempt == 0:
                    log.warning("db write failed before commit, retrying: %s", _errtext(e))
        raise AssertionError("unreachable")  # pragma: no cover

    def _marker_committed(self, marker: str, attempts) -> bool:
        """Did the transaction that inserted `marker` commit? A locking read: a COMMIT
        still running on the server (stalled longer than our read timeout) holds the
        marker row, and a plain read would not see it yet: "not committed", the
        write ran again and failed on the duplicate marker, and a committed write
        was reported failed. The locking read waits for that transaction to end."""
        while True:
            conn = None
            try:
                conn = self.connect()
                with conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM txn_marker WHERE id=%s LOCK IN SHARE MODE", (marker,))
                    found = cur.fetchone() is not None
                self._give(conn)
                return found
            except Exception as e:
                _discard(conn)
                if not is_transient(e):
                    raise
                try:
                    next(attempts)
                except DbUnavailable as gone:
                    raise DbOutcomeUnknown(f"{gone}; a COMMIT was sent before: the change may have"
                                           " been made") from None

    # -- asyncio face ----------------------------------------------------------------
    async def read(self, fn: Callable[[Cursor], T], *, lease: bool = False) -> T:
        """`lease`: the job manager's heartbeat and takeover lane (see __init__)."""
        pool = self._lease_executor if lease else self._executor
        return await asyncio.get_running_loop().run_in_executor(pool, self.read_sync, fn)

    async def write(self, fn: Callable[[Cursor], T], *, idempotent: bool = False, lease: bool = False) -> T:
        pool = self._lease_executor if lease else self._executor
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, lambda: self.write_sync(fn, idempotent=idempotent))

    async def ping(self, timeout: float = 1.0) -> bool:
        """One quick probe without retries: is the database answering right now?"""
        u = self.url
        return await asyncio.get_running_loop().run_in_executor(None, lambda: answers(
            connect_timeout=max(1, int(timeout)), read_timeout=timeout, host=u.host, port=u.port,
            user=u.user, password=u.password, database=u.database, unix_socket=u.unix_socket,
            ssl_ca=u.ssl_ca))


def answers(connect_timeout: float, read_timeout: float, ssl_ca: str | None = None, **connect: Any) -> bool:
    """One ``SELECT 1`` on a new connection (TLS with `ssl_ca`), no retries
    (pymysql.connect's `connect` arguments): does the database answer right now?"""
    conn = None
    try:
        conn = pymysql.connect(connect_timeout=connect_timeout, read_timeout=read_timeout, **connect,
                               **transport(ssl_ca))
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not answering"
        return False
    finally:
        _discard(conn)


def _discard(conn: pymysql.connections.Connection | None) -> None:
    if conn is None:
        return
    with contextlib.suppress(Exception):  # the connection is already broken
        conn.close()


def _errtext(e: BaseException | None) -> str:
    if e is None:
        return "?"
    return f"{type(e).__name__}{e.args!r}"[:200]
