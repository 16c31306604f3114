"""A workload that proves durability: insert rows with unique ids through the
DB VIP, one autocommit transaction each, and log every acknowledged id with
CLOCK_MONOTONIC. After a failover the checker reads the table back; an id in
the log that is missing from the table is a lost acknowledged write. Each ack
also says which node's server committed it (its socket path, read once per
connection): the checker holds that against the intervals in which the node's
volume said it was writable, evidence that does not come from the volume.

Run inside a lab host: `python -m tandem.lab.writer --host VIP --out FILE ...`.
Errors (connection refused during failover) are logged too, so the checker can
measure unavailability: the longest time without an ack around the fault.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

from tandem.lab.dbquery import add_connection_options


def main() -> None:
    ap = argparse.ArgumentParser()
    add_connection_options(ap)
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--writer-id", default="w1")
    ap.add_argument("--connect-timeout", type=float, default=0.3,
                    help="client connect timeout: how soon a client retries after the VIP moved")
    ap.add_argument("--io-timeout", type=float, default=1.0)
    args = ap.parse_args()
    import pymysql

    from tandem.mgmt.db import transport
    link = transport(args.ssl_ca)  # one TLS context for every reconnection
    password = Path(args.password_file).read_text().strip()
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 (open for the whole run)
    end = time.monotonic() + args.duration
    seq = 0
    conn = None
    served_by = ""
    while time.monotonic() < end:
        try:
            if conn is None:
                conn = pymysql.connect(host=args.host, port=args.port, user=args.user, password=password,
                                       connect_timeout=args.connect_timeout, read_timeout=args.io_timeout,
                                       write_timeout=args.io_timeout, autocommit=True, **link)
                with conn.cursor() as c:
                    c.execute("CREATE DATABASE IF NOT EXISTS tandem")
                    c.execute("USE tandem")
                    c.execute("CREATE TABLE IF NOT EXISTS acked (id VARCHAR(64) PRIMARY KEY,"
                              " t DOUBLE NOT NULL, pad VARBINARY(200)) ENGINE=InnoDB")
                    c.execute("SELECT @@socket")  # node-local path: which node's server this is
                    served_by = str(c.fetchone()[0])
            seq += 1
            rid = f"{args.writer_id}-{os.getpid()}-{seq:010d}"  # in order: dense pages
            t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
            with conn.cursor() as c:
                c.execute("INSERT INTO acked (id, t, pad) VALUES (%s, %s, %s)", (rid, t0, os.urandom(32)))
            t1 = time.clock_gettime(time.CLOCK_MONOTONIC)
            out.write(json.dumps({"id": rid, "sent": t0, "acked": t1, "by": served_by}) + "\n")
        except Exception as e:  # any failure: log it, reconnect, go on
            out.write(json.dumps({"error": f"{type(e).__name__}: {e}"[:200],
                                  "t": time.clock_gettime(time.CLOCK_MONOTONIC)}) + "\n")
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = None
            time.sleep(0.02)
    out.close()


def read_log(path: str) -> tuple[list[dict], list[dict]]:
    acks, errors = [], []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash of the writer itself
            (errors if "error" in rec else acks).append(rec)
    return acks, errors


if __name__ == "__main__":
    main()
