"""The lab's event log: one JSON object per line, stamped with CLOCK_MONOTONIC.

Every host of a lab lives on this one machine, so one monotonic clock orders
the events of all of them exactly; a checker reads this file afterwards to prove
(for example) that two nodes were never writable at the same instant.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class EventLog:
    """Append-only JSON-lines log shared by every process of a lab."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"t": monotonic(), "wall": time.time(), "kind": kind, **fields}
        line = (json.dumps(event, sort_keys=True, default=str) + "\n").encode()
        # One write() on an O_APPEND descriptor: lines from several processes
        # never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return event

    def read(self, kind: str | None = None) -> list[dict[str, Any]]:
        return list(self.iter(kind))

    def iter(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open() as f:
            for line in f:
                if not line.strip():
                    continue
                event = json.loads(line)
                if kind is None or event["kind"] == kind:
                    yield event


#: How a process's log says that a lab event could not be recorded (the lab's
#: campaign looks for it in every host's logs: see `lost_lab_events`).
NOT_RECORDED = "lab event not recorded"


def record_lab_event(kind: str, **fields: Any) -> None:
    """Record a fact for the lab's checker when running in a lab ($TANDEM_LAB_EVENTS),
    never failing the caller. One that cannot be written (no file descriptor
    left, a permission error) is said in the process's log instead: the checker
    would judge a history with a hole in it, a lost `writable True` hiding a
    second writer. (A full disk takes the log with it: the lab keeps both on one
    file system.)"""
    path = os.environ.get("TANDEM_LAB_EVENTS")
    if path:
        try:
            EventLog(path).record(kind, **fields)
        except OSError as e:
            logging.getLogger(__name__).error("%s: %s %s (%s: %s)", NOT_RECORDED, kind,
                                              json.dumps(fields, sort_keys=True, default=str),
                                              path, e.strerror or e)


def lost_lab_events(log_dirs: Iterable[Path]) -> list[str]:
    """The lines of the logs in `log_dirs` that say a lab event was not recorded."""
    lost: list[str] = []
    for d in log_dirs:
        for log in sorted(Path(d).glob("*.log")):
            with contextlib.suppress(OSError), log.open("rb") as f:
                lost += [f"{log.name}: {line.decode(errors='replace').strip()[:400]}"
                         for line in f if NOT_RECORDED.encode() in line]
    return lost
