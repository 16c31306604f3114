"""Invariants on one simulated history.

(1) two_writers: writable intervals of different nodes never overlap (a node is
    writable while its volume is Primary, I/O open and its write lease
    unexpired; a write completing outside such an interval counts as a point);
(2) lost_write: every acknowledged write is on every disk that later becomes
    Primary (checked at each promotion, in ``World.on_promote``);
(3) outdated_promoted: a disk recorded Outdated (DCS) or locally Outdated never
    becomes Primary (also at each promotion);
(4) liveness: `bound` seconds after the last fault healed, some node is writable;
(5) redundancy: by then the link is up and both disks are UpToDate again, unless
    the volumes refused each other (split brain: StandAlone until an operator
    decides). A disk left Outdated for good (the agent adopting a stale fence
    record, an Outdated disk that a connect on the same data never upgraded) is
    a cluster one fault away from having no eligible node.
"""

from __future__ import annotations

from tandem.sim.world import Violation, World


def check(world: World, healed_at: float, bound: float) -> list[Violation]:
    out = list(world.violations)
    spans = [(s, e, n.name) for n in world.nodes.values() for s, e in n.vol.intervals if e > s]
    spans += [(t, t, node) for node, t in world.ack_points]
    spans.sort()
    for i, (s1, e1, n1) in enumerate(spans):
        for s2, e2, n2 in spans[i + 1:]:
            if s2 >= e1:
                break
            if n1 != n2 and s1 < e2:
                out.append(Violation("two_writers", s2, f"{n1} writable {s1:.4f}..{e1:.4f} and {n2}"
                                     f" writable {s2:.4f}..{e2:.4f}"))
    t = healed_at + bound
    if not any(s <= t <= e for s, e, _ in spans if e > s):
        out.append(Violation("liveness", t, f"no node writable {bound:g} s after the faults healed"
                             f" at {healed_at:.3f}"))
    repl = world.repl
    if not repl.split_brain:
        disks = {n.name: n.vol.disk.value for n in world.nodes.values()}
        if repl.state != "connected" or set(disks.values()) != {"UpToDate"}:
            out.append(Violation("redundancy", t, f"link {repl.state}, disks {disks}"
                                 f" {bound:g} s after the faults healed at {healed_at:.3f}"))
    return sorted(out, key=lambda v: v.at)
