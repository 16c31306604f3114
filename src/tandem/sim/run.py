"""Run batches of simulated fault schedules; replay one seed exactly.

    tandem sim --model ha|volume|jobs|all --schedules 1000 --seed 1 [--workers 2]
    tandem sim --model volume --replay 1234 [--keep 0,2] [--variant no_fence]
    tandem sim --model volume --cache write-through   # one cache mode (default: by seed)
    tandem sim --minutes 1 --seed 7        # as many as fit in a minute

Schedule i of a batch uses seed S + i; every failure prints that seed, the
greedily shrunk fault list and the trace up to the violation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable

from tandem.sim.schedule import Result, run, shrink


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


def _print_summary(name: str, s: dict, seed: int, variant: str, what: str) -> None:
    last = seed + s["schedules"] - 1
    print(f"\n[{name}] schedules {s['schedules']} (seeds {seed}..{last}), variant {variant}")
    print("  faults      " + ", ".join(f"{k} {v}" for k, v in sorted(s["faults"].items())))
    print(f"  violations  {sum(s['violations'].values())} in {len(s['failing'])} schedule(s)"
          + (": " + ", ".join(f"{k} {v}" for k, v in s["violations"].items()) if s["violations"] else ""))
    if s["failing"]:
        print(f"  failing     seeds {s['failing'][:20]}")
    print(f"  history     {s['acked']} / {s['promotions']} ({what}), {s['sim_seconds']:.0f} simulated s,"
          f" {s['events']} events")
    if s["stats"]:
        print("  counts      " + ", ".join(f"{k} {v}" for k, v in sorted(s["stats"].items())))
    print(f"  throughput  {s['per_minute']:.0f} schedules/minute ({s['wall']:.1f} s wall)")


def main(argv: list[str] | None = None) -> int:
    from tandem.sim.models import MODELS
    from tandem.sim.models import batch as model_batch
    from tandem.sim.models import shrink as model_shrink
    ap = argparse.ArgumentParser(prog="python -m tandem.sim.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=(*MODELS, "all"), default="ha")
    ap.add_argument("--schedules", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="processes (each runs whole schedules)")
    ap.add_argument("--minutes", type=float, default=None, help="stop starting schedules after this long")
    ap.add_argument("--variant", default="none", help="a deliberately broken variant of the model")
    ap.add_argument("--cache", choices=("write-back", "write-through"), default=None,
                    help="volume: simulate only this cache mode (default: even seeds"
                         " write-through, odd seeds write-back)")
    ap.add_argument("--sealed", action="store_true",
                    help="volume: seal the replication frames as the daemon does (the recorded"
                         " regression seeds replay unsealed, the default)")
    ap.add_argument("--replay", type=int, default=None, metavar="SEED",
                    help="run one schedule, print its trace")
    ap.add_argument("--keep", default=None, help="with --replay: only these fault indexes (e.g. 0,2)")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--as-is", action="store_true",
                    help="ha: without the fixes the simulation proposes (tandem.sim.agent.FIXES)")
    ap.add_argument("--busy-watch", action="store_true",
                    help="ha: agents rewrite their member key every cycle, exactly as agent.py (slower)")
    a = ap.parse_args(argv)
    names = list(MODELS) if a.model == "all" else [a.model]
    for name in names:
        known = MODELS[name].variants
        joined = name == "ha" and all(p in known for p in a.variant.split("+"))
        if a.variant not in known and not joined:
            print(f"--variant: {a.variant!r} is not a variant of the {name} model"
                  f" ({', '.join(MODELS[name].variants)}; the ha model also takes several"
                  f" joined by '+', as no_unfence+no_vouch)", file=sys.stderr)
            return 2
    if a.schedules < 1 or a.workers < 1:
        print("--schedules and --workers must be at least 1", file=sys.stderr)
        return 2
    ha_extra = a.as_is or a.busy_watch
    if a.cache is not None and any("cache" not in MODELS[n].options for n in names):
        print("--cache applies to the volume model only", file=sys.stderr)
        return 2
    if a.sealed and any("sealed" not in MODELS[n].options for n in names):
        print("--sealed applies to the volume model only", file=sys.stderr)
        return 2
    options = {"cache": a.cache} if a.cache is not None else {}
    if a.sealed:
        options["sealed"] = True

    def run_one(name: str, seed: int, faults=None) -> Result:
        if name == "ha" and ha_extra:
            return run(seed, faults, a.variant, a.as_is, a.busy_watch)
        return MODELS[name].run(seed, faults, a.variant, **options)

    if a.replay is not None:
        if a.model == "all":
            print("--replay needs one --model", file=sys.stderr)
            return 2
        faults = MODELS[a.model].generate(a.replay)
        if a.keep is not None:
            try:
                idx = [int(x) for x in a.keep.split(",") if x.strip()]
                faults = [faults[i] for i in idx]
            except (ValueError, IndexError):
                print(f"--keep: {a.keep!r} is not a list of fault indexes 0..{len(faults) - 1}",
                      file=sys.stderr)
                return 2
        r = run_one(a.model, a.replay, faults)
        print(describe(r, a.variant, full=True))
        print(f"{MODELS[a.model].what}: {r.acked} / {r.promotions}, events {r.events}")
        return 1 if r.violations else 0

    bad = False
    for name in names:
        def report(seed: int, name: str = name) -> None:
            r = run_one(name, seed)
            if a.no_shrink:
                sm = r
            elif name == "ha" and ha_extra:
                sm = shrink(r, a.variant, a.as_is, a.busy_watch)
            else:
                sm = model_shrink(MODELS[name], r, a.variant, **options)
            keep = ",".join(str(r.faults.index(f)) for f in sm.faults) or '""'
            print(f"\nVIOLATION — replay: tandem sim --model {name} --replay {seed} --keep {keep}"
                  + (f" --variant {a.variant}" if a.variant != "none" else "")
                  + (f" --cache {a.cache}" if a.cache else "") + (" --sealed" if a.sealed else "")
                  + (" --as-is" if a.as_is else "") + (" --busy-watch" if a.busy_watch else ""))
            print(describe(sm, a.variant))
            sys.stdout.flush()

        if name == "ha" and ha_extra:
            s0 = batch(a.schedules, a.seed, a.variant, a.minutes, as_is=a.as_is, busy_watch=a.busy_watch)
            s = {"schedules": s0["schedules"], "faults": s0["faults"], "violations": s0["violations"],
                 "failing": s0["failing_seeds"], "acked": s0["acked_writes"], "promotions": s0["promotions"],
                 "events": s0["events"], "sim_seconds": s0["sim_seconds"], "stats": {}, "wall": s0["wall"],
                 "per_minute": s0["per_minute"]}
            for seed in s["failing"]:
                report(seed)
        else:
            s = model_batch(name, a.schedules, a.seed, a.variant, a.minutes, a.workers, progress=report,
                            options=options)
        _print_summary(name, s, a.seed, a.variant, MODELS[name].what)
        bad = bad or bool(s["failing"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
