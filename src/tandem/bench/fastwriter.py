"""The lab writer (:mod:`tandem.lab.writer`) with its client timeouts as options.

Same table, ids and log format (so the checker and `tandem bench failover` read
it unchanged); only `--connect-timeout` and `--io-timeout` differ. The lab
writer uses 1 s for both, which is also Linux's initial SYN retransmission
timeout: a connect() whose SYN went to the old holder's MAC just before the VIP
moved waits out that whole second. A client that retries its connect sooner
sees the service as soon as the VIP answers; this writer measures that.

Run inside a lab host: `python -m tandem.bench.fastwriter --host VIP --out FILE
--password-file F [--connect-timeout 0.25] [--io-timeout 1]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=3306)
    ap.add_argument("--user", default="tandem")
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--writer-id", default="w1")
    ap.add_argument("--connect-timeout", type=float, default=0.25)
    ap.add_argument("--io-timeout", type=float, default=1.0)
    args = ap.parse_args()
    import pymysql
    password = Path(args.password_file).read_text().strip()
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 (open for the whole run)
    end = time.monotonic() + args.duration
    seq = 0
    conn = None
    while time.monotonic() < end:
        try:
            if conn is None:
                conn = pymysql.connect(host=args.host, port=args.port, user=args.user, password=password,
                                       connect_timeout=args.connect_timeout, read_timeout=args.io_timeout,
                                       write_timeout=args.io_timeout, autocommit=True)
                with conn.cursor() as c:
                    c.execute("CREATE DATABASE IF NOT EXISTS tandem")
                    c.execute("USE tandem")
                    c.execute("CREATE TABLE IF NOT EXISTS acked (id VARCHAR(64) PRIMARY KEY,"
                              " t DOUBLE NOT NULL, pad VARBINARY(200)) ENGINE=InnoDB")
            seq += 1
            rid = f"{args.writer_id}-{os.getpid()}-{seq}"
            t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
            with conn.cursor() as c:
                c.execute("INSERT INTO acked (id, t, pad) VALUES (%s, %s, %s)", (rid, t0, os.urandom(64)))
            t1 = time.clock_gettime(time.CLOCK_MONOTONIC)
            out.write(json.dumps({"id": rid, "sent": t0, "acked": t1}) + "\n")
        except Exception as e:  # any failure: log it, reconnect, go on
            out.write(json.dumps({"error": f"{type(e).__name__}: {e}"[:200],
                                  "t": time.clock_gettime(time.CLOCK_MONOTONIC)}) + "\n")
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = None
            time.sleep(0.02)
    out.close()


if __name__ == "__main__":
    main()
