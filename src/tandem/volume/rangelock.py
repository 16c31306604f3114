"""Mutual exclusion of overlapping in-flight I/O.

Two writes to the same block that are in flight at once could land in one order
on this node and in the other order on the peer (they travel in sequence-number
order). DRBD calls these conflicting writes. Holding the range from "take a
sequence number" to "local write done" makes the local order equal the wire
order; resync and verify take ranges too, so a block read for the peer cannot be
overtaken by an application write to it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RangeLock:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[int, tuple[int, int]] = {}
        self._next = 0

    def _overlaps(self, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self._held.values())

    def acquire(self, offset: int, length: int, timeout: float | None = None) -> int:
        end = offset + max(length, 1)
        with self._cond:
            if not self._cond.wait_for(lambda: not self._overlaps(offset, end), timeout):
                raise TimeoutError(f"range {offset}+{length} stayed busy")
            token = self._next
            self._next += 1
            self._held[token] = (offset, end)
            return token

    def release(self, token: int) -> None:
        with self._cond:
            del self._held[token]
            self._cond.notify_all()

    @contextmanager
    def hold(self, offset: int, length: int) -> Iterator[None]:
        token = self.acquire(offset, length)
        try:
            yield
        finally:
            self.release(token)

    def busy(self) -> int:
        with self._cond:
            return len(self._held)
