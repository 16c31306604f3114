"""The lab's event log: one JSON object per line, stamped with CLOCK_MONOTONIC.

Every host of a lab lives on this one machine, so one monotonic clock orders
the events of all of them exactly; a checker reads this file afterwards to prove
(for example) that two nodes were never writable at the same instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
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


def record_lab_event(kind: str, **fields: Any) -> None:
    """Record a fact for the lab's checker when running in a lab ($TANDEM_LAB_EVENTS),
    never failing the caller."""
    path = os.environ.get("TANDEM_LAB_EVENTS")
    if path:
        with contextlib.suppress(OSError):
            EventLog(path).record(kind, **fields)
