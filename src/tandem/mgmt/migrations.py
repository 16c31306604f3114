"""The schema, created and upgraded by numbered migrations.

Each migration is a list of statements applied once, in order, and recorded in
`schema_version`. Several management servers may start at the same moment
against an empty database, so the upgrade holds a named lock (`GET_LOCK`) while it
runs: the first server migrates, the others wait and then find nothing to do.
Migrations only ever append: an applied number is never edited, a change is a new
number. A new table says `TABLE_OPTIONS` (utf8mb4; see `COLLATION`).

Every statement can run twice (`IF NOT EXISTS`, `_seed`, conversions that are
already done): MariaDB commits each DDL statement at once, so a server that loses
its connection in the middle of a migration leaves some of its statements applied
and no version row. The next server runs that migration again, whole. Before,
the first statement applied twice ("Table 'vm' already exists") stopped every
server at start until someone fixed the schema by hand. Atomic DDL (MariaDB 10.6)
means one statement is applied whole or not at all. `IF NOT EXISTS` goes by the
name alone: a table or index of that name with another definition (a repair by
hand) is taken as it is.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pymysql

from tandem.errors import TandemError
from tandem.mgmt.db import Cursor, Database

log = logging.getLogger("tandem.mgmt.migrations")

ROOT_DOMAIN_ID = "3f1e4c6a-0000-4000-8000-000000000001"
ZONE_ID = "6c2b9a4e-0000-4000-8000-000000000001"
NETWORK_ID = "9d1a7f3b-0000-4000-8000-000000000001"
OSTYPE_ID = "0a1b2c3d-0000-4000-8000-000000000001"
#: the offering of the one guest network (not a row: there is nothing to configure)
NETWORK_OFFERING_ID = "4e8c1d2f-0000-4000-8000-000000000001"

#: The character set of every table (from migration 8). Before it, tables took the
#: server's default, latin1, and text outside it (名前, an emoji) in any filter or
#: field made MariaDB refuse the statement: a 530 for every command. CloudStack's
#: tables are UTF-8; utf8mb4 holds every character. The collation compares names
#: the way the code expects: case-blind (`login_key` lower-cases; latin1_swedish_ci
#: was case-blind too) but accent-sensitive (José is not Jose, as under
#: latin1_swedish_ci) and with each emoji its own character (utf8mb4_general_ci and
#: utf8mb4_unicode_ci take every character beyond U+FFFF for the same one). It
#: needs MariaDB 10.10 or later. Keys stay within InnoDB's 3072 bytes (DYNAMIC row
#: format): the longest, login_failure.name, is 300 characters = 1200 bytes.
CHARSET = "utf8mb4"
COLLATION = "utf8mb4_uca1400_as_ci"
TABLE_OPTIONS = f"ENGINE=InnoDB DEFAULT CHARSET={CHARSET} COLLATE={COLLATION}"
#: every table of the schema, as of migration 8
TABLES = ("schema_version", "domain", "account", "user", "session", "txn_marker", "zone", "service_offering",
          "os_type", "template", "network", "vm", "mgmt_server", "async_job", "login_failure")


def _seed(table: str, **row: str | int) -> str:
    """Insert a seed row unless a row with its id is there (a migration run again):
    a row with another id and the same unique name still fails, loudly."""
    def literal(v: str | int) -> str:
        return str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'"
    return (f"INSERT INTO {table} ({', '.join(row)}) SELECT {', '.join(map(literal, row.values()))}"
            f" FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE id = {literal(row['id'])})")


MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "users, accounts, domains, sessions", [
        """CREATE TABLE IF NOT EXISTS domain (
            id CHAR(36) PRIMARY KEY, name VARCHAR(255) NOT NULL, path VARCHAR(1024) NOT NULL,
            parent_id CHAR(36) NULL, created DATETIME(6) NOT NULL DEFAULT NOW(6)) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS account (
            id CHAR(36) PRIMARY KEY, name VARCHAR(255) NOT NULL, domain_id CHAR(36) NOT NULL,
            type TINYINT NOT NULL DEFAULT 0, state VARCHAR(16) NOT NULL DEFAULT 'enabled',
            created DATETIME(6) NOT NULL DEFAULT NOW(6),
            UNIQUE KEY account_name (domain_id, name)) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS user (
            id CHAR(36) PRIMARY KEY, account_id CHAR(36) NOT NULL, username VARCHAR(255) NOT NULL,
            password_hash VARCHAR(255) NOT NULL, firstname VARCHAR(255) NOT NULL DEFAULT '',
            lastname VARCHAR(255) NOT NULL DEFAULT '', email VARCHAR(255) NOT NULL DEFAULT '',
            apikey VARCHAR(128) NULL, secretkey VARCHAR(128) NULL,
            state VARCHAR(16) NOT NULL DEFAULT 'enabled', created DATETIME(6) NOT NULL DEFAULT NOW(6),
            UNIQUE KEY user_apikey (apikey), UNIQUE KEY user_name (account_id, username)) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS session (
            key_hash CHAR(64) PRIMARY KEY, user_id CHAR(36) NOT NULL, jsessionid CHAR(32) NOT NULL,
            created DATETIME(6) NOT NULL DEFAULT NOW(6), last_used DATETIME(6) NOT NULL DEFAULT NOW(6),
            timeout_s INT NOT NULL DEFAULT 1800, KEY session_user (user_id)) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS txn_marker (
            id CHAR(32) PRIMARY KEY, created DATETIME(6) NOT NULL DEFAULT NOW(6)) ENGINE=InnoDB""",
        _seed("domain", id=ROOT_DOMAIN_ID, name="ROOT", path="/"),
    ]),
    (2, "zones, offerings, templates, networks, os types", [
        """CREATE TABLE IF NOT EXISTS zone (
            id CHAR(36) PRIMARY KEY, name VARCHAR(255) NOT NULL UNIQUE, description VARCHAR(1024) NOT NULL,
            networktype VARCHAR(16) NOT NULL DEFAULT 'Advanced', allocationstate VARCHAR(16) NOT NULL
            DEFAULT 'Enabled') ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS service_offering (
            id CHAR(36) PRIMARY KEY, name VARCHAR(255) NOT NULL UNIQUE, displaytext VARCHAR(1024) NOT NULL,
            cpunumber INT NOT NULL, cpuspeed INT NOT NULL, memory INT NOT NULL,
            created DATETIME(6) NOT NULL DEFAULT NOW(6)) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS os_type (
            id CHAR(36) PRIMARY KEY, description VARCHAR(255) NOT NULL) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS template (
            id CHAR(36) PRIMARY KEY, name VARCHAR(255) NOT NULL, displaytext VARCHAR(1024) NOT NULL,
            ostypeid CHAR(36) NOT NULL, zone_id CHAR(36) NOT NULL, featured BOOL NOT NULL DEFAULT TRUE,
            public BOOL NOT NULL DEFAULT TRUE, account_id CHAR(36) NULL, size BIGINT NOT NULL,
            format VARCHAR(16) NOT NULL DEFAULT 'QCOW2', created DATETIME(6) NOT NULL DEFAULT NOW(6))
            ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS network (
            id CHAR(36) PRIMARY KEY, name VARCHAR(255) NOT NULL, displaytext VARCHAR(1024) NOT NULL,
            zone_id CHAR(36) NOT NULL, cidr VARCHAR(32) NOT NULL, gateway VARCHAR(32) NOT NULL,
            state VARCHAR(16) NOT NULL DEFAULT 'Implemented', type VARCHAR(16) NOT NULL DEFAULT 'Shared')
            ENGINE=InnoDB""",
        _seed("zone", id=ZONE_ID, name="zone1", description="Simulated zone"),
        _seed("os_type", id=OSTYPE_ID, description="Other Linux (64-bit)"),
        _seed("service_offering", id="5b7f0c1e-0000-4000-8000-000000000001", name="Small Instance",
              displaytext="1 vCPU, 512 MB", cpunumber=1, cpuspeed=1000, memory=512),
        _seed("service_offering", id="5b7f0c1e-0000-4000-8000-000000000002", name="Medium Instance",
              displaytext="2 vCPU, 2 GB", cpunumber=2, cpuspeed=2000, memory=2048),
        _seed("template", id="7e4d2a9c-0000-4000-8000-000000000001", name="tandem-linux",
              displaytext="Simulated Linux", ostypeid=OSTYPE_ID, zone_id=ZONE_ID, size=2147483648),
        _seed("network", id=NETWORK_ID, name="defaultGuestNetwork", displaytext="Default guest network",
              zone_id=ZONE_ID, cidr="10.1.0.0/16", gateway="10.1.0.1"),
    ]),
    (3, "virtual machines, async jobs, management servers", [
        """CREATE TABLE IF NOT EXISTS vm (
            id CHAR(36) PRIMARY KEY, seq BIGINT NOT NULL AUTO_INCREMENT UNIQUE,
            name VARCHAR(255) NOT NULL, displayname VARCHAR(255) NOT NULL,
            account_id CHAR(36) NOT NULL, zone_id CHAR(36) NOT NULL, template_id CHAR(36) NOT NULL,
            service_offering_id CHAR(36) NOT NULL, network_id CHAR(36) NOT NULL,
            keypair VARCHAR(255) NULL, vmgroup VARCHAR(255) NULL,
            state VARCHAR(16) NOT NULL, created DATETIME(6) NOT NULL DEFAULT NOW(6),
            removed DATETIME(6) NULL, KEY vm_account (account_id)) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS mgmt_server (
            id VARCHAR(64) PRIMARY KEY, address VARCHAR(255) NOT NULL, heartbeat DATETIME(6) NOT NULL,
            started DATETIME(6) NOT NULL) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS async_job (
            id CHAR(36) PRIMARY KEY, seq BIGINT NOT NULL AUTO_INCREMENT UNIQUE,
            cmd VARCHAR(64) NOT NULL, instance_type VARCHAR(32) NOT NULL, instance_id CHAR(36) NOT NULL,
            params TEXT NOT NULL, account_id CHAR(36) NOT NULL, user_id CHAR(36) NOT NULL,
            owner VARCHAR(64) NOT NULL, status TINYINT NOT NULL DEFAULT 0, result_code INT NOT NULL DEFAULT 0,
            result MEDIUMTEXT NULL, takeovers INT NOT NULL DEFAULT 0, executed_by VARCHAR(64) NULL,
            created DATETIME(6) NOT NULL DEFAULT NOW(6), completed DATETIME(6) NULL,
            KEY job_queue (instance_id, status, seq), KEY job_owner (owner, status)) ENGINE=InnoDB""",
    ]),
    (4, "indexes for housekeeping", [
        "CREATE INDEX IF NOT EXISTS txn_marker_created ON txn_marker (created)",
        "CREATE INDEX IF NOT EXISTS session_last_used ON session (last_used)",
    ]),
    (5, "room for sealed API secret keys (secretbox; rows are sealed at server start)", [
        "ALTER TABLE user MODIFY secretkey VARCHAR(255) NULL",
    ]),
    (6, "async_job.host_sent: a job's host request may have left (its effect may have happened)", [
        "ALTER TABLE async_job ADD COLUMN IF NOT EXISTS host_sent TINYINT NOT NULL DEFAULT 0",
    ]),
    (7, "login_failure: failed logins per user name, for a backoff every server sees", [
        """CREATE TABLE IF NOT EXISTS login_failure (
            name VARCHAR(300) PRIMARY KEY, failures INT NOT NULL,
            last_failure DATETIME(6) NOT NULL, KEY login_failure_last (last_failure)) ENGINE=InnoDB""",
    ]),
    (8, f"every table in {CHARSET} ({COLLATION}): text outside latin1 was refused by the database", [
        # The database's default too: tables of later migrations are created in it
        # (they say TABLE_OPTIONS all the same).
        f"ALTER DATABASE CHARACTER SET {CHARSET} COLLATE {COLLATION}",
        *(f"ALTER TABLE `{t}` CONVERT TO CHARACTER SET {CHARSET} COLLATE {COLLATION}" for t in TABLES),
    ]),
    (9, "async_job by status: the takeover pass (every 0.75 s per server) read every job ever made", [
        "CREATE INDEX IF NOT EXISTS job_pending ON async_job (status, owner)",
    ]),
]

LATEST = MIGRATIONS[-1][0]
#: seconds one statement may take on the migrating connection (a conversion of a big
#: table; the pool's 5 s would give up while the server goes on) and the lock's wait
MIGRATE_IO_TIMEOUT = 600.0
LOCK_WAIT = 60
#: the database server ends the migrating session after this long idle (see migrate)
MIGRATE_IDLE_TIMEOUT = 60


def current_version(cur: Cursor) -> int:
    cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INT PRIMARY KEY, description "
                f"VARCHAR(255) NOT NULL, applied DATETIME(6) NOT NULL DEFAULT NOW(6)) {TABLE_OPTIONS}")
    cur.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
    return int(cur.fetchone()["v"])


def migrate(db: Database, target: int = LATEST) -> list[int]:
    """Bring the schema to `target`; return the versions applied now.

    A start with nothing to do asks on a connection with the pool's short timeouts.
    Only with migrations pending is the lock taken, on a connection that waits as
    long as a statement may take (`MIGRATE_IO_TIMEOUT`), and that the database
    server drops once idle for `MIGRATE_IDLE_TIMEOUT`: a server that lost power
    holding the lock sends no FIN, and the lock would stop every other server's
    start for `wait_timeout` (8 hours by default)."""
    with _connection(db) as cur:
        if current_version(cur) >= target:
            return []
    applied: list[int] = []
    with _connection(db, MIGRATE_IO_TIMEOUT) as cur:
        cur.execute(f"SET SESSION wait_timeout = {MIGRATE_IDLE_TIMEOUT}")
        cur.execute("SELECT GET_LOCK('tandem_migrate', %s) AS got", (LOCK_WAIT,))
        if cur.fetchone()["got"] != 1:
            raise TandemError(f"database {db.url.safe()}: another management server has held the"
                              f" schema migration lock for {LOCK_WAIT} s; start this one again once"
                              " that one has finished or stopped")
        try:
            have = current_version(cur)
            for version, description, statements in MIGRATIONS:
                if version <= have or version > target:
                    continue
                # MariaDB commits DDL implicitly: a run cut short midway is
                # finished by the next one (every statement can run twice).
                for stmt in statements:
                    cur.execute(stmt)
                cur.execute("INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                            (version, description))
                log.info("schema migrated to %d: %s", version, description)
                applied.append(version)
        finally:
            # After a lost connection this fails as well, and its error would hide the
            # first one; the lock ends with the session anyway.
            with contextlib.suppress(pymysql.err.MySQLError):
                cur.execute("DO RELEASE_LOCK('tandem_migrate')")
    return applied


@contextlib.contextmanager
def _connection(db: Database, io_timeout: float | None = None) -> Iterator[Cursor]:
    conn = db.connect_retrying(io_timeout)
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        with contextlib.suppress(pymysql.err.MySQLError):  # already lost
            conn.close()
