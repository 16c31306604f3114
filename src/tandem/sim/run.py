"""Run batches of simulated fault schedules; replay one seed exactly.

    python -m tandem.sim.run --schedules 1000 --seed 1
    python -m tandem.sim.run --replay 1234 [--keep 0,2] [--variant skip_fence]
    python -m tandem.sim.run --minutes 1 --seed 7        # as many as fit in a minute

Schedule i of a batch uses seed S + i; every failure prints that seed, the
greedily shrunk fault list and the trace up to the violation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable

from tandem.sim.agent import VARIANTS
from tandem.sim.schedule import Result, generate, run, shrink


def batch(n: int, seed: int, variant: str = "none", minutes: float | None = None,
          stop_at_first: bool = False, progress: Callable[[Result], None] | None = None,
          as_is: bool = False, busy_watch: bool = False) -> dict:
    t0 = time.perf_counter()
    kinds: Counter[str] = Counter()
    bad: list[Result] = []
    vkinds: Counter[str] = Counter()
    done = acked = promotions = events = 0
    sim_seconds = 0.0
    for i in range(n):
        if minutes is not None and time.perf_counter() - t0 > minutes * 60:
            break
        r = run(seed + i, variant=variant, as_is=as_is, busy_watch=busy_watch)
        done += 1
        kinds.update(f.kind for f in r.faults)
        acked += r.acked
        promotions += r.promotions
        events += r.events
        sim_seconds += r.sim_seconds
        if r.violations:
            bad.append(r)
            vkinds.update(v.kind for v in r.violations)
            if progress:
                progress(r)
            if stop_at_first:
                break
    wall = time.perf_counter() - t0
    return {"schedules": done, "faults": dict(sorted(kinds.items())), "violations": dict(vkinds),
            "failing_seeds": [r.seed for r in bad], "failures": bad, "acked_writes": acked,
            "promotions": promotions, "events": events, "sim_seconds": sim_seconds, "wall": wall,
            "per_minute": done / wall * 60 if wall else 0.0}


def trace_until(r: Result, tail: int = 60) -> list[str]:
    """The trace up to just after the first violation, last `tail` lines."""
    if not r.violations:
        return r.trace[-tail:]
    t = r.violations[0].at + 0.05
    lines = [ln for ln in r.trace if float(ln[:9]) <= t]
    return lines[-tail:]


def describe(r: Result, variant: str, full: bool = False) -> str:
    out = [f"seed {r.seed}: {len(r.violations)} violation(s)"]
    out += [f"  ! {v}" for v in r.violations[:5]]
    out.append("  faults:")
    out += [f"    [{i}] {f}" for i, f in enumerate(r.faults)]
    out.append("  trace:" if full else "  trace (up to the first violation):")
    out += ["    " + ln for ln in (r.trace if full else trace_until(r))]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tandem.sim.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedules", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=None, help="stop starting schedules after this long")
    ap.add_argument("--variant", choices=VARIANTS, default="none", help="a deliberately broken agent")
    ap.add_argument("--replay", type=int, default=None, metavar="SEED",
                    help="run one schedule, print its trace")
    ap.add_argument("--keep", default=None, help="with --replay: only these fault indexes (e.g. 0,2)")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--as-is", action="store_true",
                    help="without the fixes the simulation proposes (tandem.sim.agent.FIXES)")
    ap.add_argument("--busy-watch", action="store_true",
                    help="agents rewrite their member key every cycle, exactly as agent.py (slower)")
    a = ap.parse_args(argv)

    if a.replay is not None:
        faults = generate(a.replay)
        if a.keep is not None:
            idx = [int(x) for x in a.keep.split(",") if x.strip()]
            faults = [faults[i] for i in idx]
        r = run(a.replay, faults, a.variant, a.as_is, a.busy_watch)
        print(describe(r, a.variant, full=True))
        print(f"acked writes {r.acked}, promotions {r.promotions}, events {r.events}")
        return 1 if r.violations else 0

    def report(r: Result) -> None:
        s = r if a.no_shrink else shrink(r, a.variant, a.as_is, a.busy_watch)
        keep = ",".join(str(r.faults.index(f)) for f in s.faults) or '""'
        print(f"\nVIOLATION — replay: python -m tandem.sim.run --replay {r.seed} --keep {keep}"
              + (f" --variant {a.variant}" if a.variant != "none" else "")
              + (" --as-is" if a.as_is else "") + (" --busy-watch" if a.busy_watch else ""))
        print(describe(s, a.variant))
        sys.stdout.flush()

    s = batch(a.schedules, a.seed, a.variant, a.minutes, progress=report, as_is=a.as_is,
              busy_watch=a.busy_watch)
    last = a.seed + s["schedules"] - 1
    print(f"\nschedules   {s['schedules']} (seeds {a.seed}..{last}), variant {a.variant}"
          + (", code as is (no fixes)" if a.as_is else ", with the proposed fixes"))
    print("faults      " + ", ".join(f"{k} {v}" for k, v in s["faults"].items()))
    print(f"violations  {sum(s['violations'].values())} in {len(s['failing_seeds'])} schedule(s)"
          + (": " + ", ".join(f"{k} {v}" for k, v in s["violations"].items()) if s["violations"] else ""))
    if s["failing_seeds"]:
        print(f"failing     seeds {s['failing_seeds'][:20]}")
    print(f"history     {s['acked_writes']} acked writes, {s['promotions']} promotions,"
          f" {s['sim_seconds']:.0f} simulated s, {s['events']} events")
    print(f"throughput  {s['per_minute']:.0f} schedules/minute ({s['wall']:.1f} s wall)")
    return 1 if s["failing_seeds"] else 0


if __name__ == "__main__":
    sys.exit(main())
