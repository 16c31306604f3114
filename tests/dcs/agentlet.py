"""A tiny stand-in for the agent, run inside a lab host (``python -m tests.dcs.agentlet``).

``hold CLUSTER NODE ENDPOINT...``: acquire the leader key and renew the lease
every 0.25 s, printing ``renewed <monotonic>`` after each keepalive, until killed
(the crash test kills it with its host).

``probe CLUSTER NODE ENDPOINT...``: try one view load per endpoint and print a
JSON line ``{"ok", "error", "elapsed"}`` for each (the partition test runs it
on the cut-off node).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tandem.dcs.base import DCSError, monotonic
from tandem.dcs.etcd import EtcdDCS
from tandem.dcs.pki import HostTls


async def hold(dcs: EtcdDCS) -> None:
    leader = None
    while leader is None:
        leader = await dcs.attempt_to_acquire_leader(await dcs.load())
        await asyncio.sleep(0.05)
    print(f"acquired {leader.revision}", flush=True)
    while True:
        sent = monotonic()
        try:
            r = await dcs.renew_lease()
            print(f"renewed {sent:.6f} {r.ttl}", flush=True)
        except DCSError as e:
            print(f"failed {sent:.6f} {e}", flush=True)
        await asyncio.sleep(0.25)


async def probe(dcs: EtcdDCS) -> None:
    """One load per endpoint (a failed call moves the session to the next one)."""
    for _ in dcs.endpoints:
        t = monotonic()
        try:
            await dcs.load()
            out = {"ok": True, "error": None}
        except DCSError as e:
            out = {"ok": False, "error": str(e)}
        print(json.dumps({**out, "elapsed": monotonic() - t}), flush=True)


def main(argv: list[str]) -> None:
    cmd, cluster, node, tls_dir, *endpoints = argv  # tls_dir: the lab's PKI
    dcs = EtcdDCS(cluster, node, endpoints, ttl=1, op_timeout=0.5, tls=HostTls.of(Path(tls_dir), node))
    asyncio.run({"hold": hold, "probe": probe}[cmd](dcs))


if __name__ == "__main__":
    main(sys.argv[1:])
