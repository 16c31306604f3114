"""Run one resource operation from the command line, in the current namespace.

    python -m tandem.cluster.resources.run KIND ACTION --config JSON

ACTION is start, stop, monitor or reload (haproxy). Prints one JSON line (``ok``, ``state`` for
monitor, ``message``, ``seconds`` measured around the operation alone) and
exits 0 (ok), 1 (failed), 7 (monitor: stopped) or 2 (bad config). Why it
exists: a resource acts on the network namespace it runs in, so tests (and an
operator debugging a node) run it inside a host with ``tandem lab exec`` or
``Lab.run``; since every resource keeps its state (loop device, pids) in its
run dir, one-shot invocations behave like an agent restarted between calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from tandem.cluster.resources import build, parse_resource
from tandem.cluster.resources.base import HealthState, ResourceError
from tandem.errors import ConfigError


async def _main(kind: str, action: str, config: dict) -> int:
    resource = build(parse_resource({**config, "kind": kind}, source="--config"))
    if action == "monitor":
        t0 = time.monotonic()
        health = await resource.monitor()
        out = {"ok": health.is_ok, "state": str(health.state), "message": health.reason,
               "seconds": round(time.monotonic() - t0, 4)}
        code = 0 if health.is_ok else 7 if health.state is HealthState.STOPPED else 1
    elif action == "reload":
        reload = getattr(resource, "reload", None)
        if reload is None:
            print(f"{kind} resources have no reload", file=sys.stderr)
            return 2
        t0 = time.monotonic()
        try:
            out, code = {"ok": True, "message": await reload()}, 0
        except (ResourceError, OSError) as e:
            out, code = {"ok": False, "message": str(e)}, 1
        out["seconds"] = round(time.monotonic() - t0, 4)
    else:
        res = await (resource.start() if action == "start" else resource.stop())
        out, code = res.to_json(), 0 if res.ok else 1
    print(json.dumps(out), flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tandem.cluster.resources.run")
    p.add_argument("kind")
    p.add_argument("action", choices=("start", "stop", "monitor", "reload"))
    p.add_argument("--config", required=True, help="the resource's table as JSON")
    args = p.parse_args(argv)
    try:
        config = json.loads(args.config)
    except ValueError as e:
        print(f"--config: not valid JSON ({e})", file=sys.stderr)
        return 2
    if not isinstance(config, dict):
        print("--config: not a JSON object", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(args.kind, args.action, config))
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
