"""A simulated hypervisor host: the stand-in for a KVM host in tests and labs.

It runs as its own process with its own state on its own disk, and the
management servers drive it over HTTP, as CloudStack drives its agents. It is
deliberately strict, so it can judge the management tier:

- every operation carries a request id; a repeated id answers the first result
  and never repeats the effect (also while the first is still running), which is
  what lets a surviving management server safely re-drive a dead one's job;
- operations take `op_seconds`, so jobs are really in flight when a server dies;
- two different operations on one VM at the same time are refused (409) and
  written to the effect log as a `conflict`: the management tier must serialize;
- each applied effect is appended to `effects.jsonl` (request id, op, vm, start,
  end, resulting state) *after* the state file recording it was replaced
  atomically (a crash between the two: the line is written at the next start);
  tests read the log to check that every effect happened once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("tandem.mgmt.simhost")

OPS = ("create", "start", "stop", "reboot", "destroy")
REQUEST_BODY_LIMIT = 64 * 1024


class OpRefused(Exception):
    """The operation is not valid in the VM's current state."""


class SimHost:
    """The host's state and its operations (the HTTP layer is `make_app`)."""

    def __init__(self, state_dir: Path, op_seconds: float = 0.5, clock_offset: float = 0.0):
        self.dir = Path(state_dir)
        self.clock_offset = clock_offset  #: seconds this host's wall clock runs ahead (a test knob)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.op_seconds = op_seconds
        self.state_file = self.dir / "state.json"
        self.effect_log = self.dir / "effects.jsonl"
        if self.state_file.exists():
            data = json.loads(self.state_file.read_text())
        else:
            data = {"vms": {}, "requests": {}}
        self.vms: dict[str, dict[str, Any]] = data["vms"]
        self.requests: dict[str, dict[str, Any]] = data["requests"]
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._busy: dict[str, str] = {}  # vm -> request id of the operation running on it
        self.stats = {"applied": 0, "replayed": 0, "joined": 0, "conflicts": 0}
        self._recover_effect_log()

    def _recover_effect_log(self) -> None:
        """After a crash: the effect log says every effect the state holds. The state
        file is replaced first and the log line appended after it, so a power cut
        between the two left an applied effect (replayed to its sender from then on)
        without its line: the campaign's checker found two jobs "reported done but
        never applied" (torture 74, 76), both cut by a crash of this host 0.6 s into
        the job. A line the crash cut in half is dropped."""
        logged: set[str] = set()
        if self.effect_log.exists():
            raw = self.effect_log.read_bytes()
            keep = raw if raw.endswith(b"\n") or not raw else raw[:raw.rfind(b"\n") + 1]
            if keep != raw:
                with open(self.effect_log, "r+b") as f:
                    f.truncate(len(keep))
                    os.fsync(f.fileno())
            for line in keep.decode(errors="replace").splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if not e.get("conflict"):
                    logged.add(str(e.get("request_id")))
        for rid, r in self.requests.items():
            if r.get("ok") and rid not in logged:
                self._log({"request_id": rid, "op": r.get("op"), "vm": r.get("vm"), "start": r.get("start"),
                           "end": r.get("end"), "state": r.get("state"), "recovered": True})

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"vms": self.vms, "requests": self.requests}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)

    def _log(self, entry: dict[str, Any]) -> None:
        with open(self.effect_log, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def known(self, request_id: str) -> bool:
        """Done or running: a repeat of it replays, whatever its expiry."""
        return request_id in self.requests or request_id in self._inflight

    async def apply(self, request_id: str, op: str, vm: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Apply `op` to `vm` once per request id; return the (first) result."""
        if request_id in self.requests:
            self.stats["replayed"] += 1
            return {**self.requests[request_id], "replayed": True}
        if request_id in self._inflight:
            self.stats["joined"] += 1  # the same request again while the first one runs
            return {**(await asyncio.shield(self._inflight[request_id])), "replayed": True}
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._inflight[request_id] = fut
        try:
            result = await self._run(request_id, op, vm, spec)
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: a waiter may not exist
            raise
        finally:
            del self._inflight[request_id]

    async def _run(self, request_id: str, op: str, vm: str, spec: dict[str, Any]) -> dict[str, Any]:
        if vm in self._busy:
            self.stats["conflicts"] += 1
            self._log({"request_id": request_id, "op": op, "vm": vm, "conflict": True,
                       "with": self._busy[vm], "time": time.time()})
            raise OpRefused(f"vm {vm} is busy with request {self._busy[vm]}")
        self._busy[vm] = request_id
        try:
            start = time.time()
            try:
                self._check(op, vm)
            except OpRefused as e:
                result = {"ok": False, "error": str(e), "state": self.vms.get(vm, {}).get("state")}
            else:
                await asyncio.sleep(self.op_seconds)
                state = self._effect(op, vm, spec)
                result = {"ok": True, "state": state}
            result.update(request_id=request_id, op=op, vm=vm)
            if result["ok"]:
                result.update(start=start, end=time.time())  # for the log, also after a crash
            self.requests[request_id] = result
            self._save()
            if result["ok"]:
                self.stats["applied"] += 1
                self._log({"request_id": request_id, "op": op, "vm": vm, "start": start,
                           "end": result["end"], "state": result["state"]})
            return result
        finally:
            del self._busy[vm]

    def _check(self, op: str, vm: str) -> None:
        cur = self.vms.get(vm, {}).get("state")
        if op == "create" and cur is not None:
            raise OpRefused(f"vm {vm} already exists")
        if op != "create" and cur is None:
            raise OpRefused(f"vm {vm} does not exist on this host")
        if op == "reboot" and cur != "Running":
            raise OpRefused(f"vm {vm} is {cur}, not Running")

    def _effect(self, op: str, vm: str, spec: dict[str, Any]) -> str | None:
        if op == "create":
            self.vms[vm] = {"state": "Running" if spec.get("start", True) else "Stopped",
                            "spec": spec, "boots": 1}
        elif op == "start":
            self.vms[vm]["state"] = "Running"
            self.vms[vm]["boots"] += 1
        elif op == "stop":
            self.vms[vm]["state"] = "Stopped"
        elif op == "reboot":
            self.vms[vm]["boots"] += 1
        elif op == "destroy":
            del self.vms[vm]
            return None
        return self.vms[vm]["state"]


def make_app(host: SimHost) -> web.Application:
    app = web.Application(client_max_size=REQUEST_BODY_LIMIT)

    async def op(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            rid, name, vm = str(body["request_id"]), str(body["op"]), str(body["vm"])
            spec = dict(body.get("spec") or {})
            expires = None if body.get("expires") is None else float(body["expires"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"ok": False, "error": "need JSON with request_id, op, vm"}, status=400)
        if name not in OPS or not rid or not vm:
            return web.json_response({"ok": False, "error": f"unknown op {name!r}"}, status=400)
        if expires is not None and time.time() + host.clock_offset > expires and not host.known(rid):
            return web.json_response({"ok": False, "expired": True,
                                      "error": f"request {rid} expired (its sender's job lease ran out)"},
                                     status=409)
        try:
            # Shielded: a client that hangs up must not cut an effect in half.
            result = await asyncio.shield(host.apply(rid, name, vm, spec))
        except OpRefused as e:
            return web.json_response({"ok": False, "error": str(e), "busy": True}, status=409)
        return web.json_response(result, status=200 if result["ok"] else 409)

    async def vms(request: web.Request) -> web.Response:
        return web.json_response({"vms": host.vms})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(host.stats)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_post("/v1/ops", op)
    app.router.add_get("/v1/vms", vms)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/health", health)
    return app


async def serve(state_dir: Path, host: str, port: int, op_seconds: float,
                clock_offset: float = 0.0) -> None:
    """Run the simulated host until cancelled."""
    sim = SimHost(state_dir, op_seconds, clock_offset)
    runner = web.AppRunner(make_app(sim), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("simhost listening on %s:%d, state in %s", host, port, state_dir)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
