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
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager


class RangeLock:
    """Each holder holds a sorted list of disjoint ranges: one range for a write,
    a whole batch of scattered blocks for a resync answer. Overlap tests bisect
    each holder's list, so a batch of hundreds of blocks costs no more to check
    against than one range."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[int, tuple[list[int], list[int]]] = {}  # token -> (starts, ends)
        self._next = 0
        self._waiting = 0  # acquirers in wait_for: release notifies only if any

    def _overlaps(self, start: int, end: int) -> bool:
        for starts, ends in self._held.values():
            i = bisect_right(ends, start)  # first held range ending after `start`
            if i < len(starts) and starts[i] < end:
                return True
        return False

    def acquire(self, offset: int, length: int, timeout: float | None = None) -> int:
        """One range: the path of every application write, kept short (no sorting,
        merging or closure when nothing overlaps)."""
        start, end = offset, offset + max(length, 1)
        with self._cond:
            if not self._overlaps(start, end):
                token = self._next
                self._next += 1
                self._held[token] = ([start], [end])
                return token
        return self.acquire_many([(offset, length)], timeout)

    def acquire_many(self, ranges: list[tuple[int, int]], timeout: float | None = None) -> int:
        """Wait until none of the (offset, length) ranges overlaps a held one, then
        hold them all under one token."""
        spans = sorted((off, off + max(n, 1)) for off, n in ranges)
        starts: list[int] = []
        ends: list[int] = []
        for s, e in spans:  # merge touching or overlapping ranges of this holder
            if ends and s <= ends[-1]:
                ends[-1] = max(ends[-1], e)
            else:
                starts.append(s)
                ends.append(e)
        pairs = list(zip(starts, ends, strict=True))

        def free() -> bool:
            return not any(self._overlaps(s, e) for s, e in pairs)

        with self._cond:
            self._waiting += 1
            try:
                ok = self._cond.wait_for(free, timeout)
            finally:
                self._waiting -= 1
            if not ok:
                off, n = ranges[0]
                raise TimeoutError(f"range {off}+{n} stayed busy")
            token = self._next
            self._next += 1
            self._held[token] = (starts, ends)
            return token

    def release(self, token: int) -> None:
        with self._cond:
            del self._held[token]
            if self._waiting:
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
