"""The simulated models behind one interface, and batches of them on several processes.

A model turns a seed (and optionally a fault list) into a :class:`Result`; the same
seed always gives the same trace, so a batch worker only reports *which* seeds
failed and the parent replays them to shrink and print them.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tandem.sim import jobworld, volworld
from tandem.sim import schedule as ha_schedule
from tandem.sim.agent import VARIANTS as HA_VARIANTS
from tandem.sim.schedule import Result
from tandem.sim.world import Fault


@dataclass(frozen=True)
class Model:
    name: str
    run: Callable[..., Result]  #: run(seed, faults=None, variant="none", **options)
    generate: Callable[[int], list[Fault]]
    variants: tuple[str, ...]
    what: str  #: what `Result.acked` and `Result.promotions` count here
    options: tuple[str, ...] = ()  #: keyword options of run (volume: cache, sealed)


def _ha_run(seed: int, faults: list[Fault] | None = None, variant: str = "none") -> Result:
    return ha_schedule.run(seed, faults, variant)


MODELS = {
    "ha": Model("ha", _ha_run, ha_schedule.generate, HA_VARIANTS, "acked writes, promotions"),
    "volume": Model("volume", volworld.run, volworld.generate, volworld.VARIANTS,
                    "acked writes, promotions", ("cache", "sealed")),
    "jobs": Model("jobs", jobworld.run, jobworld.generate, jobworld.VARIANTS,
                  "jobs succeeded, takeovers"),
}


def shrink(model: Model, result: Result, variant: str = "none", **options) -> Result:
    """Greedily drop faults while the run (same seed) still fails the same way."""
    want = {v.kind for v in result.violations}
    best, changed = result, True
    while changed:
        changed = False
        for i in range(len(best.faults) - 1, -1, -1):
            trial = best.faults[:i] + best.faults[i + 1:]
            r = model.run(best.seed, trial, variant, **options)
            if r.violations and {v.kind for v in r.violations} & want:
                best, changed = r, True
    return best


def _chunk(args: tuple[str, int, int, str, bool, dict]) -> dict:
    name, first, n, variant, stop_at_first, options = args
    model = MODELS[name]
    out = {"schedules": 0, "faults": Counter(), "violations": Counter(), "failing": [], "acked": 0,
           "promotions": 0, "events": 0, "sim_seconds": 0.0, "stats": Counter()}
    for seed in range(first, first + n):
        r = model.run(seed, variant=variant, **options)
        out["schedules"] += 1
        out["faults"].update(f.kind for f in r.faults)
        out["acked"] += r.acked
        out["promotions"] += r.promotions
        out["events"] += r.events
        out["sim_seconds"] += r.sim_seconds
        out["stats"].update(r.stats)
        if r.violations:
            out["violations"].update(v.kind for v in r.violations)
            out["failing"].append(seed)
            if stop_at_first:
                break
    return out


def batch(name: str, n: int, seed: int, variant: str = "none", minutes: float | None = None,
          workers: int = 1, stop_at_first: bool = False,
          progress: Callable[[int], None] | None = None, options: dict | None = None) -> dict:
    """Run seeds seed..seed+n-1 of one model; `progress(seed)` for each failing seed as found;
    `options` are the model's keyword options (volume: cache)."""
    options = options or {}
    t0 = time.perf_counter()
    chunk = max(1, min(20 if minutes else 100, n // max(1, workers * 8) or 1))
    jobs = [(name, s, min(chunk, seed + n - s), variant, stop_at_first, options)
            for s in range(seed, seed + n, chunk)]
    total = {"schedules": 0, "faults": Counter(), "violations": Counter(), "failing": [], "acked": 0,
             "promotions": 0, "events": 0, "sim_seconds": 0.0, "stats": Counter()}

    def add(part: dict) -> bool:
        for k in ("schedules", "acked", "promotions", "events", "sim_seconds"):
            total[k] += part[k]
        for k in ("faults", "violations", "stats"):
            total[k].update(part[k])
        for s in part["failing"]:
            total["failing"].append(s)
            if progress:
                progress(s)
        if stop_at_first and total["failing"]:
            return False
        return minutes is None or time.perf_counter() - t0 < minutes * 60

    if workers <= 1:
        for j in jobs:
            if not add(_chunk(j)):
                break
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers) as pool:
            for part in pool.imap(_chunk, jobs):
                if not add(part):
                    pool.terminate()
                    break
    wall = time.perf_counter() - t0
    total["failing"].sort()
    total["wall"] = wall
    total["per_minute"] = total["schedules"] / wall * 60 if wall else 0.0
    return total
