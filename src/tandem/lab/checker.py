"""Checks on a lab run's history (the event log and the writer's log), all on the
one CLOCK_MONOTONIC every lab host shares.

- no acknowledged write lost: every id the writer logged as acknowledged is in
  the table read back afterwards;
- never two writers: the intervals in which a node's volume was writable
  (from its `writable` events; a host crash ends its interval) never overlap;
- unavailability: the gap in acknowledged writes around a fault.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    node: str
    start: float
    end: float  # float("inf") while still writable

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end


def writable_intervals(events: Iterable[dict]) -> list[Interval]:
    open_since: dict[str, float] = {}
    out: list[Interval] = []
    for ev in sorted(events, key=lambda e: e["t"]):
        if ev["kind"] == "writable":
            node = ev["node"]
            if ev["writable"] and node not in open_since:
                open_since[node] = ev["t"]
            elif not ev["writable"] and node in open_since:
                out.append(Interval(node, open_since.pop(node), ev["t"]))
        elif ev["kind"] == "fault" and ev.get("fault") == "crash":
            node = ev["host"]
            if node in open_since:
                out.append(Interval(node, open_since.pop(node), ev["t"]))
    out += [Interval(n, t, float("inf")) for n, t in open_since.items()]
    return sorted(out, key=lambda i: i.start)


def overlapping_writers(events: Iterable[dict]) -> list[tuple[Interval, Interval]]:
    iv = writable_intervals(events)
    return [(a, b) for i, a in enumerate(iv) for b in iv[i + 1:] if a.node != b.node and a.overlaps(b)]


def lost_writes(acks: Iterable[dict], stored_ids: set[str]) -> list[str]:
    return [a["id"] for a in acks if a["id"] not in stored_ids]


def write_gap(acks: list[dict], t_fault: float) -> float | None:
    """Seconds from the last acknowledgement before `t_fault` to the first after it."""
    before = [a["acked"] for a in acks if a["acked"] <= t_fault]
    after = [a["acked"] for a in acks if a["acked"] > t_fault]
    if not before or not after:
        return None
    return min(after) - max(before)
