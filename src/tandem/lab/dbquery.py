"""One SQL statement against the lab's database through the DB VIP, run inside a lab
host: `python -m tandem.lab.dbquery --host VIP --password-file F [--ssl-ca CA]
[--database D] SQL [PARAM...]`. Prints {"rows": [...], "rowcount": N} as JSON.

The lab's checks read the database the way a client does, from a client's seat, over
TLS when the cluster has it (MariaDB then takes no plain TCP client)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_connection_options(ap: argparse.ArgumentParser) -> None:
    """How a lab client reaches the database (also tandem.lab.writer's)."""
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=3306)
    ap.add_argument("--user", default="tandem")
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--ssl-ca", default=None, help="TLS, the server checked against this CA")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    add_connection_options(ap)
    ap.add_argument("--database", default=None)
    ap.add_argument("sql")
    ap.add_argument("params", nargs="*")
    args = ap.parse_args(argv)
    import pymysql

    from tandem.mgmt.db import transport
    conn = pymysql.connect(host=args.host, port=args.port, user=args.user,
                           password=Path(args.password_file).read_text().strip(), database=args.database,
                           connect_timeout=2, read_timeout=30, autocommit=True, **transport(args.ssl_ca))
    try:
        with conn.cursor() as cur:
            n = cur.execute(args.sql, args.params or None)
            rows = [list(r) for r in cur.fetchall()] if cur.description else []
    finally:
        conn.close()
    print(json.dumps({"rows": rows, "rowcount": n}, default=str))


if __name__ == "__main__":
    main()
