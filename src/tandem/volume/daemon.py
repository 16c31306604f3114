"""The per-node volume daemon: a Replicator plus its control socket.

Runs in the foreground (a supervisor, systemd or the lab, keeps it alive);
SIGTERM demotes if possible and shuts down cleanly. Everything an operator or
the agent asks of it goes through the control socket (see control.py).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from tandem.errors import TandemError
from tandem.volume.control import ControlServer
from tandem.volume.heap import keep_freed_memory
from tandem.volume.replicator import Replicator
from tandem.volume.spec import VolumeSpec

log = logging.getLogger("tandem.volume")


def _ranges(req: dict[str, Any]) -> list[tuple[int, int]]:
    raw = req.get("ranges", [])
    if not isinstance(raw, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and x >= 0 for x in r)
            for r in raw):
        raise TandemError("ranges must be a list of [offset, length] pairs of non-negative integers")
    return [(a, b) for a, b in raw]


def _until(req: dict[str, Any], cmd: str = "write-lease") -> float | None:
    until = req.get("until")
    if until is not None and (not isinstance(until, int | float) or isinstance(until, bool)):
        raise TandemError(f"{cmd}: 'until' must be a CLOCK_MONOTONIC time in seconds or null")
    return None if until is None else float(until)


def _epoch(req: dict[str, Any]) -> int | None:
    epoch = req.get("epoch")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)
                              or not 0 < epoch < 1 << 63):
        raise TandemError("primary: 'epoch' must be the leader epoch, a positive integer, or null")
    return epoch


def handlers(rep: Replicator, stop: threading.Event) -> dict:
    def primary(req):
        rep.promote(force=bool(req.get("force")), peer_outdated=bool(req.get("peer_outdated")),
                    epoch=_epoch(req))
        return rep.status()

    def secondary(req):
        rep.demote(force=bool(req.get("force")))
        return rep.status()

    def suspend(req):
        drained = rep.suspend(str(req.get("reason", "suspended by the operator")))
        return {"drained": drained}

    def outdate(req):
        nonce = req.get("nonce")
        if nonce is not None and (not isinstance(nonce, int) or isinstance(nonce, bool)):
            raise TandemError("outdate: 'nonce' must be an integer (the agent's, to find a late"
                              " outdate in the status)")
        mark = rep.outdate(unless_connected=req.get("unless_connected") is True, nonce=nonce)
        return {**rep.status(), "marked": mark is not None, "mark": mark}

    def undo_outdate(req):
        mark, until = req.get("mark"), _until(req, "undo-outdate")
        if not isinstance(mark, int) or isinstance(mark, bool) or until is None:
            raise TandemError("undo-outdate: 'mark' must be the 'mark' of the outdate answer and"
                              " 'until' a CLOCK_MONOTONIC deadline in seconds")
        refused = rep.undo_outdate(mark, until)
        return {**rep.status(), "undone": refused is None, "refused": refused}

    def down(req):
        stop.set()
        return "stopping"

    return {
        "status": lambda req: rep.status(),
        "primary": primary,
        "secondary": secondary,
        "verify": lambda req: rep.verify(),
        "invalidate": lambda req: (rep.invalidate(), rep.status())[1],
        "attach": lambda req: (rep.attach(), rep.status())[1],
        "discard-my-data": lambda req: (rep.set_discard_my_data(), rep.status())[1],
        "connect": lambda req: (rep.reconnect("connect requested"), rep.status())[1],
        "disconnect": lambda req: (rep.disconnect(), rep.status())[1],
        "outdate": outdate,
        "undo-outdate": undo_outdate,
        "lost-leadership": lambda req: setattr(rep, "lost_leadership", True),
        "inject-eio": lambda req: rep.store.inject_errors(_ranges(req)),
        "suspend-io": suspend,
        "write-lease": lambda req: rep.set_write_lease(
            _until(req), force_secondary=req.get("force_secondary") is not False),
        "resume-io": lambda req: rep.resume(),
        "down": down,
    }


def run(spec: VolumeSpec, secret: bytes, fence: Callable[[], bool] | None) -> None:
    """`fence`: the fence-peer callback (None: none; see cli.volume_cmd)."""
    import faulthandler
    import sys
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)  # thread dump on demand
    keep_freed_memory()
    rep = Replicator(spec, secret, fence_peer=fence, split_brain_policy=spec.after_split_brain)
    stop = threading.Event()
    server = ControlServer(spec.control_socket, handlers(rep, stop))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rep.start()
    server.start()
    log.info("volume %s up on %s (peer %s at %s:%d)", spec.resource, spec.node, spec.peer,
             spec.peer_address, spec.port)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        rep.stop()
        log.info("volume %s down", spec.resource)
