"""A migration cut short must not wedge the schema.

MariaDB commits each DDL statement at once, so a management server that loses
its database connection in the middle of a migration leaves part of it applied
and no version row (lab seed 232: node2's server died during migration 3, and
every later start failed on "Table 'vm' already exists"). These tests cut every
migration after every one of its statements, on a real MariaDB, and require the
next `migrate` to finish the job with the same schema and seed rows as a clean
run.
"""

from __future__ import annotations

import re

import pytest

from tandem.mgmt.db import Database, DbUrl
from tandem.mgmt.migrations import LATEST, MIGRATIONS, TABLES, migrate

CUTS = [(version, k) for version, _, statements in MIGRATIONS for k in range(1, len(statements) + 1)]


def _db(mariadb, name: str) -> Database:
    return Database(DbUrl(host="127.0.0.1", port=mariadb.port, user=mariadb.user, database=name,
                          password=mariadb.password))


def _schema(mariadb, name: str) -> dict[str, tuple[str, list[tuple]]]:
    """Each table's definition and its rows without the times they were written."""
    out = {}
    with mariadb.root_conn() as conn, conn.cursor() as cur:
        cur.execute(f"USE `{name}`")
        cur.execute("SHOW TABLES")
        for (table,) in cur.fetchall():
            cur.execute(f"SHOW CREATE TABLE `{table}`")
            ddl = re.sub(r" AUTO_INCREMENT=\d+", "", cur.fetchone()[1])
            cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s AND"
                        " TABLE_NAME=%s AND DATA_TYPE <> 'datetime' ORDER BY ORDINAL_POSITION", (name, table))
            columns = ", ".join(f"`{c}`" for (c,) in cur.fetchall())
            cur.execute(f"SELECT {columns} FROM `{table}` ORDER BY 1")
            out[table] = (ddl, sorted(cur.fetchall()))
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
    assert set(schema) == set(TABLES)
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
