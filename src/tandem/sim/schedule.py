"""Random fault schedules from a seed, running one, and shrinking a failing one."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tandem.sim.checker import check
from tandem.sim.world import NODES, Fault, Violation, World

FAULT_WINDOW = (2.0, 18.0)  #: faults start in this window (cluster settled before)
LIVENESS_BOUND = 8.0  #: seconds after the last heal by which some node must be writable
KIND_WEIGHTS = {"crash": 3, "partition": 3, "partition_up": 1, "partition_down": 1, "link_cut": 3,
                "pause": 2, "vpause": 2, "loss": 1, "switchover": 1, "skew": 1, "disk_fail": 1}
DURATION = {"crash": (0.1, 5.0), "partition": (0.2, 6.0), "partition_up": (0.2, 6.0),
            "partition_down": (0.2, 6.0), "link_cut": (0.2, 6.0), "pause": (0.1, 3.0), "vpause": (0.1, 4.0),
            "loss": (0.5, 6.0), "disk_fail": (0.2, 6.0)}
MAX_SKEW = 0.02  #: clock rates within 1 +- this (the design's margin tolerates far more)


def generate(seed: int) -> list[Fault]:
    rng = random.Random(seed * 2 + 1)  # a stream of its own: the run uses Sim(seed)
    kinds, weights = zip(*KIND_WEIGHTS.items(), strict=True)
    faults = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.choices(kinds, weights)[0]
        node = rng.choice(NODES)
        if kind == "skew":
            faults.append(Fault("skew", node, 0.0, 0.0, round(rng.uniform(-MAX_SKEW, MAX_SKEW), 5)))
            continue
        at = round(rng.uniform(*FAULT_WINDOW), 3)
        if kind == "switchover":
            faults.append(Fault("switchover", None, at))
            continue
        lo, hi = DURATION[kind]
        dur = round(rng.uniform(lo, hi), 3)
        p = round(rng.uniform(0.05, 0.5), 3) if kind == "loss" else 0.0
        faults.append(Fault(kind, None if kind == "link_cut" else node, at, dur, p))
    return sorted(faults, key=lambda f: (f.at, f.kind))


@dataclass
class Result:
    seed: int
    faults: list[Fault]
    violations: list[Violation]
    trace: list[str] = field(repr=False)
    acked: int = 0
    promotions: int = 0
    events: int = 0
    sim_seconds: float = 0.0
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


def healed_at(faults: list[Fault]) -> float:
    return max([f.at + f.duration for f in faults if f.kind != "skew"] + [FAULT_WINDOW[0]])


def run(seed: int, faults: list[Fault] | None = None, variant: str = "none", as_is: bool = False,
        busy_watch: bool = False) -> Result:
    """One schedule. as_is: without the fixes in tandem.sim.agent.FIXES (the code as it is);
    busy_watch: agents rewrite their member key every cycle, as agent.py does."""
    faults = generate(seed) if faults is None else faults
    world = World(seed, faults, variant, busy_watch=busy_watch, fixes=frozenset() if as_is else None)
    heal = healed_at(faults)
    end = heal + LIVENESS_BOUND + 0.5
    world.run(end)
    violations = check(world, heal, LIVENESS_BOUND)
    return Result(seed, faults, violations, world.sim.trace, len(world.acked), world.promotions,
                  world.sim.events, end)


def shrink(result: Result, variant: str = "none", as_is: bool = False, busy_watch: bool = False) -> Result:
    """Greedily drop faults while the run still fails the same way (same seed)."""
    want = {v.kind for v in result.violations}
    best = result
    changed = True
    while changed:
        changed = False
        for i in range(len(best.faults) - 1, -1, -1):
            trial = best.faults[:i] + best.faults[i + 1:]
            r = run(best.seed, trial, variant, as_is, busy_watch)
            if r.violations and {v.kind for v in r.violations} & want:
                best, changed = r, True
    return best
