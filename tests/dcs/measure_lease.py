"""How long a crashed leader's key survives, by where etcd's own leader sits.

    .venv/bin/python -m tests.dcs.measure_lease [--trials N]

Brings up a throwaway lab with tandem's etcd (heartbeat 50 ms, election 500 ms,
pre-vote), runs a holder (acquire, keepalive every 0.25 s, TTL 1 s) on node1
against node1's member, crashes node1 (holder and member die together) and
times the leader key's deletion as a watch on the witness sees it. Half the
trials with etcd's leader on the witness, half with it on node1 (the crash then
also costs an etcd election). The test suite runs one trial of the first kind.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import time
from pathlib import Path

from tandem.dcs.base import monotonic
from tandem.dcs.etcd import EtcdDCS
from tandem.dcs.etcd_server import LabEtcd

REPO = Path(__file__).resolve().parents[2]


async def wait_deleted(dcs: EtcdDCS, key: str, start_revision: int, timeout: float) -> float:
    """Monotonic time at which a watch reports `key` deleted."""
    async def first_delete() -> float:
        async for ch in dcs.watch(start_revision):
            if ch.key == key and ch.deleted:
                return monotonic()
        raise AssertionError("watch ended")
    return await asyncio.wait_for(first_delete(), timeout)


def crash_holder(etcd: LabEtcd, cluster: str, host: str = "node1", observer: str = "witness"
                 ) -> tuple[float, float]:
    """Run a holder on `host`, crash `host`; return (key gone after the crash,
    key gone after the holder's last keepalive was sent), in seconds."""
    lab = etcd.lab
    rec = lab.spawn(host, "holder", [sys.executable, "-m", "tests.dcs.agentlet", "hold", cluster, host,
                                     str(etcd.tls_dir),
                                     f"127.0.0.1:{etcd.members[host].client_port}"],
                    env={"PYTHONPATH": str(REPO)})
    log = Path(rec.log)

    async def scenario() -> tuple[float, float]:
        async with EtcdDCS(cluster, observer, [etcd.endpoint(observer)], tls=etcd.members[observer].tls) as w:
            deadline = time.monotonic() + 10
            while (await w.load()).leader is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"holder never acquired: {log.read_text()}")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.6)  # a few renewals
            view = await w.load()
            assert view.leader is not None and view.leader.node == host
            watch = asyncio.create_task(wait_deleted(w, "leader", view.revision + 1, timeout=8))
            await asyncio.sleep(0.1)
            t_crash = monotonic()
            await asyncio.to_thread(lab.faults.crash, host)
            gone = await watch
            renewed = [float(line.split()[1]) for line in log.read_text().splitlines()
                       if line.startswith("renewed")]
            return gone - t_crash, gone - max(r for r in renewed if r < t_crash)
    return asyncio.run(scenario())


def main() -> None:
    from tandem.lab.lab import Lab
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    root = Path("/var/tmp/tandem-test") / f"measure{secrets.token_hex(2)}"
    name = "m" + secrets.token_hex(3)
    lab = Lab.up(name, root=root)
    try:
        etcd = LabEtcd(lab)
        etcd.start()
        for placement in ("witness", "node1"):
            rows = []
            for _ in range(args.trials):
                etcd.move_leader(placement)
                rows.append(crash_holder(etcd, "m" + secrets.token_hex(3)))
                lab.faults.restart("node1")
                etcd.start()
            crash = [r[0] for r in rows]
            renew = [r[1] for r in rows]
            print(f"etcd leader on {placement:7}: key gone after crash median"
                  f" {statistics.median(crash):.2f} s"
                  f" (min {min(crash):.2f}, max {max(crash):.2f}); after last keepalive median"
                  f" {statistics.median(renew):.2f} s (min {min(renew):.2f}, max {max(renew):.2f});"
                  f" n={len(rows)}", flush=True)
    finally:
        Lab.down_by_name(name, root)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
