"""The database layer's retry rules against a real MariaDB, with a loopback TCP
proxy that can lose the answer to a COMMIT: a write is committed exactly once
whether the connection breaks before COMMIT or after the server committed."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tandem.mgmt.db import Database, DbOutcomeUnknown, DbUnavailable, DbUrl
from tandem.mgmt.migrations import migrate
from tests.mgmt.conftest import free_port
from tests.mgmt.tcpproxy import TcpProxy


class CommitEater(TcpProxy):
    """A TCP proxy to MariaDB; when armed, it forwards the next COMMIT to the
    server but closes the client's connection instead of passing the answer."""

    def __init__(self, upstream_port: int):
        self.armed = threading.Event()
        self.eaten = 0
        self.delay = 0.0
        #: (errno, message): answer the COMMIT the server took with this error instead
        #: of closing the connection (what a failing disk's binlog fsync looks like)
        self.error: tuple[int, str] | None = None
        super().__init__(upstream_port)

    def chunk_hook(self, data: bytes, to_server: bool, state: dict) -> bool | bytes:
        # COM_QUERY "COMMIT" after the 4-byte packet header (not READ-COMMITTED in
        # a new connection's init command)
        if to_server and self.armed.is_set() and data[4:] == b"\x03COMMIT":
            self.armed.clear()
            state["eat"] = True
            time.sleep(self.delay)  # the COMMIT is late (the client may give up on it)
        if not to_server and state.get("eat"):
            self.eaten += 1
            if self.error is not None:
                state["eat"] = False
                return _err_packet(data[3], *self.error)
            return False  # the server answered the COMMIT: the client never hears it
        return True


def _err_packet(seq: int, errno: int, message: str) -> bytes:
    """A MySQL protocol ERR packet with sequence number `seq`."""
    payload = b"\xff" + errno.to_bytes(2, "little") + b"#HY000" + message.encode()
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


@pytest.fixture
def layer(mariadb, database):
    proxy = CommitEater(mariadb.port)
    url = DbUrl(host="127.0.0.1", port=proxy.port, user=mariadb.user, database=database,
                password=mariadb.password)
    db = Database(url, retry_budget=5)
    migrate(db)
    db.write_sync(lambda cur: cur.execute("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"),
                  idempotent=True)
    try:
        yield db, proxy
    finally:
        db.close()
        proxy.close()


def _count(db: Database) -> int:
    def read(cur):
        cur.execute("SELECT COUNT(*) AS n FROM t")
        return cur.fetchone()["n"]
    return db.read_sync(read)


@pytest.mark.parametrize("error", [
    None,  # the answer is lost: the connection closes
    # the server's own file-layer errors (below 1000): a binlog fsync that fails at COMMIT
    (27, "Can't sync file './mariadb-bin.000044' to disk (Errcode: 5 \"Input/output error\")"),
    (3, "Error writing file './mariadb-bin.000022' (Errcode: 30 \"Read-only file system\")"),
])
def test_lost_commit_answer_is_checked_not_guessed(layer, error):
    """The server committed and the client never heard so. With a file-layer error for
    an answer (the volume's disk failing under MariaDB), the transaction is prepared
    and in the binlog, and the next primary may commit it; that was a plain failure: a
    client told "internal error" sent a deploy again and got a second VM (review 23;
    40 such errors in the campaign's logs)."""
    db, proxy = layer
    calls = []

    def insert(cur):
        calls.append(1)
        cur.execute("INSERT INTO t (v) VALUES (1)")
        return "done"

    proxy.error = error
    proxy.armed.set()
    assert db.write_sync(insert) == "done"
    assert proxy.eaten == 1 and len(calls) == 1
    assert _count(db) == 1  # committed once, found by its marker, not repeated


def test_connection_killed_before_commit_is_retried(layer, mariadb):
    db, _ = layer
    calls = []

    def insert(cur):
        calls.append(1)
        cur.execute("INSERT INTO t (v) VALUES (2)")
        if len(calls) == 1:
            cur.execute("SELECT CONNECTION_ID() AS id")
            me = cur.fetchone()["id"]
            with mariadb.root_conn() as root, root.cursor() as rc:
                rc.execute(f"KILL {int(me)}")
        return "ok"

    assert db.write_sync(insert) == "ok"
    assert len(calls) == 2 and _count(db) == 1


def test_unreachable_database_fails_after_the_budget():
    db = Database(DbUrl(host="127.0.0.1", port=free_port(), user="x", database="x"), retry_budget=1.0)
    t0 = time.monotonic()
    with pytest.raises(DbUnavailable) as err:
        db.read_sync(lambda cur: cur.execute("SELECT 1"))
    assert 0.5 <= time.monotonic() - t0 < 3  # it gives up when the next pause would overrun the budget
    assert "unreachable" in str(err.value)
    db.close()


def test_password_is_not_in_repr():
    url = DbUrl.parse("mysql://u:hunter2secret@127.0.0.1:3306/db")
    assert url.password == "hunter2secret"
    db = Database(url)
    assert "hunter2secret" not in repr(url) + url.safe() + repr(db)
    db.close()


def test_connections_build_no_ssl_context(layer, monkeypatch):
    """Our MariaDB has no TLS: pymysql's default still built an SSL context (every system
    CA loaded) per connection, which was most of an idle management server's CPU."""
    import ssl
    built = []
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: built.append(1) or real(*a, **k))
    db, _ = layer
    conn = db.connect()
    try:
        assert not conn.ssl
    finally:
        conn.close()
    assert asyncio.run(db.ping()) is True
    assert built == []


def test_a_commit_still_running_when_its_outcome_is_checked_is_found(layer):
    """The COMMIT reached the server only after the client's read timeout (a slow
    link; on a cluster, also a COMMIT stalled while the volume fences its peer). A
    plain read of the marker did not see the commit still in progress, the write
    ran again, the first COMMIT went through meanwhile and the second attempt
    failed on the duplicate marker: a committed write was reported as failed."""
    db, proxy = layer
    db.io_timeout = 1.0
    while not db._idle.empty():  # connections made from here on time out after 1 s
        db._idle.get_nowait().close()
    calls = []

    def insert(cur):
        calls.append(1)
        cur.execute("INSERT INTO t (v) VALUES (3)")
        return "stored"

    proxy.delay = 2.0
    proxy.armed.set()
    assert db.write_sync(insert) == "stored"
    assert len(calls) == 1  # not run again: the late COMMIT was found
    assert _count(db) == 1


def test_a_commit_whose_outcome_cannot_be_learned_is_reported_as_such(layer):
    """The answer to the COMMIT was lost, and the database stayed unreachable for the
    whole budget: the write may have been made (here it was), so the error must
    not read as a plain "unreachable, try again" (a client's retry would accept a
    second job)."""
    db, proxy = layer
    db.retry_budget = 1.5
    while not db._idle.empty():  # the marker check must open a new connection
        db._idle.get_nowait().close()
    refuse = threading.Event()
    proxy.accept_hook = lambda client: not refuse.is_set()  # type: ignore[method-assign]
    calls = []

    def insert(cur):
        calls.append(1)
        cur.execute("INSERT INTO t (v) VALUES (4)")
        refuse.set()  # from the COMMIT on, no new connection gets through
        return "stored"

    proxy.armed.set()
    with pytest.raises(DbOutcomeUnknown) as err:
        db.write_sync(insert)
    assert "may have been made" in str(err.value) and len(calls) == 1
    refuse.clear()
    db.retry_budget = 5
    assert _count(db) == 1  # it was



def test_the_url_names_its_tls_ca_and_bad_options_are_one_line(tmp_path):
    """`?ssl-ca=CA_FILE` (MySQL's URI option): TLS, the server checked against that CA.
    Any other option, an empty or a repeated one, and a CA that cannot be loaded are
    one line each, at start, not at the first query."""
    from tandem.dcs import pki
    from tandem.errors import TandemError
    plain = DbUrl.parse("mysql://u@127.0.0.1/db")
    assert plain.ssl_ca is None and Database(plain)._transport == {"ssl_disabled": True}
    pki.init(tmp_path / "pki", "c1", {"node1": ["127.0.0.1"]}, db_hosts={"node1": ["127.0.0.1"]})
    ca = tmp_path / "pki" / "db-ca.crt"
    url = DbUrl.parse(f"mysql://u:pw@127.0.0.1:3307/db?ssl-ca={ca}")
    assert (url.ssl_ca, url.port, url.password) == (str(ca), 3307, "pw")
    assert url.safe() == f"mysql://u@127.0.0.1:3307/db?ssl-ca={ca}"
    db = Database(url)
    ctx = db._transport["ssl"]
    assert ctx.verify_mode.name == "CERT_REQUIRED" and not ctx.check_hostname
    assert Database(url)._transport["ssl"] is ctx  # one context per CA file
    db.close()
    for bad in ("?sslmode=disable", f"?ssl-ca={ca}&ssl-ca={ca}", "?ssl-ca=", "?ssl-ca"):
        with pytest.raises(TandemError) as e:
            DbUrl.parse(f"mysql://u@127.0.0.1/db{bad}")
        assert "\n" not in str(e.value) and "?ssl-ca=CA_FILE" in str(e.value), bad
    # a port that is not one, a broken IPv6 address: one line too (a ValueError's
    # traceback before)
    for bad in ("mysql://u@127.0.0.1:notaport/db", "mysql://u@127.0.0.1:99999/db", "mysql://u@[::1/db"):
        with pytest.raises(TandemError) as e:
            DbUrl.parse(bad)
        assert "\n" not in str(e.value) and str(e.value).startswith("--db: expected mysql://"), bad
    with pytest.raises(TandemError) as e:
        Database(DbUrl.parse(f"mysql://u@127.0.0.1/db?ssl-ca={tmp_path / 'none.crt'}"))
    assert str(e.value).startswith(f"--db ssl-ca {tmp_path / 'none.crt'}: cannot load the CA")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    with pytest.raises(TandemError, match="cannot load the CA"):
        Database(DbUrl.parse(f"mysql://u@127.0.0.1/db?ssl-ca={tmp_path / 'junk.crt'}"))
