"""A migration cut short must not wedge the schema.

MariaDB commits each DDL statement at once, so a management server that loses
its database connection in the middle of a migration leaves part of it applied
and no version row (lab seed 232: node2's server died during migration 3, and
every later start failed on "Table 'vm' already exists"). These tests cut every
migration after every one of its statements, on a real MariaDB, and require the
next `migrate` to finish the job with the same schema and seed rows as a clean
run; and they cut the connection itself, or let it go silent holding the lock.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading

import pymysql
import pytest

from tandem.errors import TandemError
from tandem.mgmt import migrations
from tandem.mgmt.db import Database, DbUrl
from tandem.mgmt.migrations import LATEST, MIGRATIONS, TABLES, migrate
from tests.mgmt.tcpproxy import TcpProxy

CUTS = [(version, k) for version, _, statements in MIGRATIONS for k in range(1, len(statements) + 1)]


def _db(mariadb, name: str, port: int | None = None) -> Database:
    return Database(DbUrl(host="127.0.0.1", port=port or mariadb.port, user=mariadb.user, database=name,
                          password=mariadb.password))


def _schema(mariadb, name: str) -> dict[str, object]:
    """Each table's definition and its rows without the times they were written, and
    the database's default collation."""
    out: dict[str, object] = {}
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute("SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM"
                    " information_schema.SCHEMATA WHERE SCHEMA_NAME=%s", (name,))
        out["(database)"] = cur.fetchone()
        cur.execute(f"USE `{name}`")
        cur.execute("SHOW TABLES")
        for (table,) in cur.fetchall():
            cur.execute(f"SHOW CREATE TABLE `{table}`")
            ddl = re.sub(r" AUTO_INCREMENT=\d+", "", cur.fetchone()[1])
            cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s AND"
                        " TABLE_NAME=%s AND DATA_TYPE <> 'datetime' ORDER BY ORDINAL_POSITION", (name, table))
            columns = ", ".join(f"`{c}`" for (c,) in cur.fetchall())
            cur.execute(f"SELECT {columns} FROM `{table}` ORDER BY 1")
            out[table] = (ddl, cur.fetchall())
    return out


@pytest.fixture(scope="module")
def clean_schema(mariadb):
    name = mariadb.create_database()
    db = _db(mariadb, name)
    try:
        assert migrate(db) == [v for v, _, _ in MIGRATIONS]
    finally:
        db.close()
    schema = _schema(mariadb, name)
    assert set(schema) == {"(database)", *TABLES}
    return schema


@pytest.mark.parametrize(("version", "k"), CUTS, ids=[f"{v}-after-{k}" for v, k in CUTS])
def test_a_migration_cut_short_is_finished_by_the_next_run(mariadb, clean_schema, version, k):
    name = mariadb.create_database()
    db = _db(mariadb, name)
    try:
        migrate(db, target=version - 1)
        statements = next(s for v, _, s in MIGRATIONS if v == version)
        with mariadb.root_conn() as conn, conn.cursor() as cur:  # the server that died: no version row
            cur.execute(f"USE `{name}`")
            for stmt in statements[:k]:
                cur.execute(stmt)
        assert migrate(db) == list(range(version, LATEST + 1))
        assert migrate(db) == []
    finally:
        db.close()
    assert _schema(mariadb, name) == clean_schema


class CutAt(TcpProxy):
    """Cuts a connection (both ways) when the client sends `marker`; with `silent`,
    keeps it open and drops everything the client sends after the chunk that held
    `marker` (a server that lost power: no FIN)."""

    def __init__(self, upstream_port: int, marker: bytes, silent: bool = False):
        super().__init__(upstream_port)
        self.marker, self.silent = marker, silent
        self.hit = threading.Event()

    def chunk_hook(self, data: bytes, to_server: bool, state: dict) -> bool | bytes:
        if not to_server:
            return True
        if state.get("hit"):
            return b""
        if self.marker in data:
            self.hit.set()
            if not self.silent:
                return False
            state["hit"] = True
        return True

    def close(self) -> None:
        for sock in self.held:  # wakes a pump blocked in recv: close() alone would not
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        super().close()

    def _pump(self, src, dst, state: dict, to_server: bool) -> None:
        if not self.silent:
            return super()._pump(src, dst, state, to_server)
        # Silent: the client's end may close; the database's end stays open, unanswered,
        # until the proxy closes (a host that lost power never says goodbye).
        self.held += [src, dst]
        try:
            while data := src.recv(65536):
                verdict = self.chunk_hook(data, to_server, state)
                dst.sendall(verdict if isinstance(verdict, bytes) else data)
        except OSError:
            pass


def test_a_connection_lost_mid_migration_names_its_cause_and_the_next_start_finishes(mariadb, clean_schema):
    """Seed 232 on a real connection: it drops after migration 3 created `vm`."""
    name = mariadb.create_database()
    proxy = CutAt(mariadb.port, b"CREATE TABLE IF NOT EXISTS mgmt_server")
    db = _db(mariadb, name, proxy.port)
    try:
        with pytest.raises(pymysql.err.OperationalError) as e:
            migrate(db)
        assert proxy.hit.is_set()
        assert e.value.args[0] == 2013, e.value  # lost connection, not what the lock's release said
    finally:
        db.close()
        proxy.close()
    with mariadb.root_conn() as conn, conn.cursor() as cur:  # the premise: half of migration 3
        cur.execute(f"SELECT MAX(version) FROM `{name}`.schema_version")
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND"
                    " TABLE_NAME IN ('vm', 'mgmt_server')", (name,))
        assert cur.fetchone()[0] == 1
    db = _db(mariadb, name)
    try:
        assert migrate(db) == list(range(3, LATEST + 1))
    finally:
        db.close()
    assert _schema(mariadb, name) == clean_schema


def test_a_migrator_gone_silent_holding_the_lock_loses_it_to_the_idle_timeout(mariadb, monkeypatch):
    """A server that lost power holding the lock sends no FIN: the database ends its
    session after MIGRATE_IDLE_TIMEOUT, not after wait_timeout (8 hours), and the next
    server migrates. A lock that stays held is one line, not a traceback."""
    monkeypatch.setattr(migrations, "MIGRATE_IDLE_TIMEOUT", 2)
    monkeypatch.setattr(migrations, "MIGRATE_IO_TIMEOUT", 60.0)
    monkeypatch.setattr(migrations, "LOCK_WAIT", 15)
    name = mariadb.create_database()
    proxy = CutAt(mariadb.port, b"GET_LOCK", silent=True)  # silent from the next query on
    gone = _db(mariadb, name, proxy.port)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            migrate(gone)
        except BaseException as e:  # noqa: BLE001 - examined below
            errors.append(e)

    holder = None
    t = threading.Thread(target=first)
    try:
        t.start()
        assert proxy.hit.wait(20)
        db = _db(mariadb, name)  # the next server, while the first still waits for an answer
        try:
            assert migrate(db) == [v for v, _, _ in MIGRATIONS]
        finally:
            db.close()
        proxy.close()  # the first one's wait ends
        t.join(30)
        assert not t.is_alive()
        assert errors and isinstance(errors[0], pymysql.err.OperationalError), errors
        # a lock that another session holds for good: one clear error
        monkeypatch.setattr(migrations, "LOCK_WAIT", 1)
        holder = pymysql.connect(unix_socket=str(mariadb.socket), user="root", autocommit=True)
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK('tandem_migrate', 1)")
            assert cur.fetchone()[0] == 1
        fresh = mariadb.create_database()
        db = _db(mariadb, fresh)
        try:
            with pytest.raises(TandemError, match="held the schema migration lock for 1 s"):
                migrate(db)
        finally:
            db.close()
    finally:
        if holder is not None:
            holder.close()
        proxy.close()
        t.join(30)
        gone.close()
