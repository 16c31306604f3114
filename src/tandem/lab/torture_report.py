"""The campaign's report: a summary table for the terminal, the results as JSON,
and a timeline picture of one schedule (faults, roles, VIP holders, write
throughput) drawn from the event log and the writer's log."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return "never" if math.isinf(x) else f"{x:.2f}"


def summary_table(result: dict[str, Any]) -> Table:
    t = Table(title=f"torture campaign seed {result['seed']}: {result['schedules_run']} schedules of"
                    f" {result['duration']:g} s", show_lines=False)
    t.add_column("fault kind")
    t.add_column("faults", justify="right")
    for p in ("p50", "p90", "p99", "p100"):
        t.add_column(f"unavail {p} s", justify="right")
    for kind, n in result["faults_by_kind"].items():
        pc = result["unavailability_by_kind"].get(kind, {})
        t.add_row(kind, str(n), *(_fmt(pc.get(p)) for p in ("p50", "p90", "p99", "p100")))
    pc = result["unavailability_per_schedule"]
    t.add_row("[bold]per schedule[/bold]", str(result["schedules_run"]),
              *(_fmt(pc.get(p)) for p in ("p50", "p90", "p99", "p100")))
    return t


def summary_lines(result: dict[str, Any]) -> list[str]:
    w, j, c = result["writes"], result["jobs"], result["convergence_s"]
    lines = [
        f"writes: {w['acknowledged']} acknowledged, {w['stored']} rows stored, {w['errors']} failed attempts",
        f"API jobs: {j['accepted']} accepted, {j['succeeded']} succeeded, {j['failed']} failed;"
        f" {j['effects']} effects on the simulated host",
        "convergence after healing (s): " + (", ".join(f"{k} {v:.1f}" for k, v in c.items()) or "-"),
    ]
    bare = without_faults(result)
    if bare:
        lines.append(f"schedules with no fault applied (every fault skipped, its target gone): {bare} of"
                     f" {result['schedules_run']}; they count as clean but tested only the workload")
    for d in result.get("deaths", []):
        lines.append(f"daemon died without a fault: {d['name']} on {d['host']} (pid {d['pid']}, {d['how']});"
                     " restarted")
    if result.get("aborted"):
        lines.append(f"ABORTED: {result['aborted']}")
    by_check: dict[str, int] = {}
    for v in result["violations"]:
        by_check[v["check"]] = by_check.get(v["check"], 0) + 1
    lines.append(f"violations: {len(result['violations'])}" +
                 (" (" + ", ".join(f"{k} {n}" for k, n in by_check.items()) + ")" if by_check else ""))
    lines += [f"  [{v['schedule'] or '-'}] {v['check']}: {v['what']}" for v in result["violations"][:20]]
    return lines


def without_faults(result: dict[str, Any]) -> int:
    """How many of a campaign's schedules had no fault applied (all skipped); counted
    from the schedules for results.json saved before the count was."""
    if "schedules_without_faults" in result:
        return int(result["schedules_without_faults"])
    return sum(not s.get("faults_applied") for s in result.get("schedules", []))


def write_json(result: dict[str, Any], path: Path) -> None:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isinf(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x
    path.write_text(json.dumps(clean(result), indent=1, sort_keys=True, default=str) + "\n")


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several campaigns' results.json as one record (the 1,000-schedule target is
    reached over many runs): sums, and percentiles recomputed from every fault's and
    every schedule's own unavailability, never averaged from per-run percentiles."""
    from tandem.lab.checker import percentiles

    def num(x: Any) -> float:
        return math.inf if x is None else float(x)  # write_json stores "never" as null

    faults = [f for r in results for f in r.get("faults", [])]
    by_kind: dict[str, list[float]] = {}
    for f in faults:
        by_kind.setdefault(f["kind"], []).append(num(f["unavailable_s"]))
    scheds = [s for r in results for s in r.get("schedules", [])]
    return {
        "campaigns": [{"seed": r["seed"], "schedules_run": r["schedules_run"], "aborted": r.get("aborted"),
                       "violations": len(r["violations"]), "schedules_without_faults": without_faults(r)}
                      for r in results],
        "schedules_run": sum(r["schedules_run"] for r in results),
        "schedules_without_faults": sum(without_faults(r) for r in results),
        "duration": max((r["duration"] for r in results), default=0.0),
        "seed": ",".join(str(r["seed"]) for r in results),
        "writes": {k: sum(r["writes"][k] for r in results) for k in ("acknowledged", "errors", "stored")},
        "jobs": {k: sum(r["jobs"][k] for r in results)
                 for k in ("accepted", "succeeded", "failed", "effects")},
        "deaths": [d for r in results for d in r.get("deaths", [])],
        "aborted": "; ".join(f"seed {r['seed']}: {r['aborted']}" for r in results
                             if r.get("aborted")) or None,
        "faults_by_kind": {k: len(v) for k, v in sorted(by_kind.items())},
        "unavailability_by_kind": {k: percentiles(v) for k, v in sorted(by_kind.items())},
        "unavailability_per_schedule": percentiles([num(s["unavailable_s"]) for s in scheds]),
        "convergence_s": percentiles([s["converge_s"] for s in scheds if s.get("converge_s") is not None]),
        "violations": [v for r in results for v in r["violations"]],
    }


def pick_schedule(result: dict[str, Any]) -> dict[str, Any] | None:
    """The schedule worth a picture: one with a violation, else the most faults."""
    scheds = result["schedules"]
    if not scheds:
        return None
    bad_names = {v["schedule"] for v in result["violations"]}
    bad = [s for s in scheds if s["name"] in bad_names]
    if bad:
        return bad[0]
    return max(scheds, key=lambda s: (len(s["faults_applied"]), min(s["unavailable_s"] or 0, 1e9)))


def timeline_png(sched: dict[str, Any], events: list[dict], acks: list[dict], path: Path) -> None:
    """Faults, writable nodes, VIP holders and acknowledged writes per second, on the
    lab clock relative to the schedule's start."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tandem.lab.checker import vip_intervals, writable_intervals

    t0 = sched["t_start"]
    t1 = sched["t_end"] or (t0 + sched["duration"])
    span = t1 - t0
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.3]})
    rows: list[str] = []

    def bar(label: str, start: float, end: float, color: str) -> None:
        if label not in rows:
            rows.append(label)
        s, e = max(start, t0) - t0, min(end, t1) - t0
        if e > s:
            ax.barh(rows.index(label), e - s, left=s, height=0.6, color=color)

    for f in sched["faults_applied"]:
        bar(f"fault {f['index']}: {f['describe']}"[:48], f["start"], f["end"], "tab:red")
    for iv in writable_intervals(events):
        bar(f"writable: {iv.node}", iv.start, iv.end, "tab:green")
    for addr, ivs in sorted(vip_intervals(events).items()):
        for iv in ivs:
            bar(f"VIP {addr} on {iv.node}", iv.start, iv.end, "tab:blue")
    ax.axvline(sched["t_healed"] - t0, color="black", linestyle="--", linewidth=1)
    if sched.get("converge_s") is not None:
        ax.axvline(sched["t_healed"] + sched["converge_s"] - t0, color="tab:green", linestyle=":",
                   linewidth=1)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"schedule {sched['name']}: faults (red), writable volume (green), VIP holders (blue);"
                 " dashed: all healed, dotted: converged", fontsize=9)
    width = 0.25
    nbins = max(1, int(span / width) + 1)
    counts = [0] * nbins
    for a in acks:
        if t0 <= a["acked"] < t1:
            counts[int((a["acked"] - t0) / width)] += 1
    ax2.bar([i * width for i in range(nbins)], [c / width for c in counts], width=width, align="edge",
            color="tab:gray")
    ax2.set_ylabel("acked writes/s")
    ax2.set_xlabel("seconds since the schedule started (CLOCK_MONOTONIC)")
    ax2.set_xlim(0, span)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recheck(report: Path, converge_bound: float | None = None) -> dict[str, Any]:
    """A finished campaign's saved history (events.jsonl, writer.jsonl, history.json,
    results.json in its --report directory) through today's checks: a checker made
    stricter after a long campaign judges that campaign too, without running it
    again. Convergence is judged by `converge_bound` if given, else by the bound the
    campaign ran with (the default bound for results.json saved before it was).
    Returns {"schedules", "violations", "was"} (`was`: the count the campaign itself
    reported)."""
    from tandem.lab.events import EventLog
    from tandem.lab.torture import (
        SETTLED_CHECKS,
        Options,
        history_violations,
        idle_api_violations,
        settled_violations,
    )
    from tandem.lab.writer import read_log
    files = {n: report / n for n in ("results.json", "history.json", "events.jsonl", "writer.jsonl")}
    missing = [n for n, f in files.items() if not f.exists()]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    result = json.loads(files["results.json"].read_text())
    if converge_bound is None:
        converge_bound = float(result.get("converge_bound") or Options.converge_bound)
    history = json.loads(files["history.json"].read_text())
    events = EventLog(files["events.jsonl"]).read()
    acks, _ = read_log(str(files["writer.jsonl"]))
    scheds = result["schedules"]
    violations: list[dict[str, Any]] = []
    if result.get("aborted"):
        violations.append({"schedule": None, "check": "aborted", "what": result["aborted"]})
    for s in scheds:
        own = [v for v in s.get("violations", []) if not v.startswith(SETTLED_CHECKS)]
        if s.get("converge_s") is not None:
            own += settled_violations(s["converge_s"], s.get("verify") or {}, converge_bound)
        violations += [{"schedule": s["name"], "check": "convergence", "what": v} for v in own]
    stored = set(history["stored"]) if history.get("stored") is not None else None
    spans = [(s["name"], s["t_start"], s["t_end"]) for s in scheds]
    violations += history_violations(events, acks, stored, history.get("jobs", []),
                                     history.get("effects", []), history.get("db_jobs"), spans,
                                     history.get("missing_at_lookup"),
                                     jobs_unread="db_jobs" in history and history["db_jobs"] is None,
                                     not_recorded=history.get("not_recorded"))
    violations += idle_api_violations([(s["name"], s["t_healed"], s["t_end"]) for s in scheds
                                       if s.get("converge_s") is not None], history.get("jobs", []))
    violations += saved_history_gaps(result, history, events, files["writer.jsonl"])
    return {"schedules": len(scheds), "violations": violations, "was": len(result["violations"])}


def saved_history_gaps(result: dict[str, Any], history: dict[str, Any], events: list[dict],
                       writer_log: Path) -> list[dict[str, Any]]:
    """What a saved campaign lacks against its own counts: every check passes on an
    empty or truncated history, so the files must hold what the campaign counted
    when it judged them (review 29): as many acknowledged writes, jobs, effects and
    database jobs, the start and end of every schedule in the event log, and no
    unreadable line in the writer's log but a last one cut by a crash."""
    from tandem.lab.writer import read_log
    out: list[dict[str, Any]] = []

    def gap(what: str) -> None:
        out.append({"schedule": None, "check": "history", "what": what})

    lines = writer_log.read_text(errors="replace").splitlines()
    bad = 0
    for line in lines[:-1]:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            bad += 1
    if bad:
        gap(f"{writer_log}: {bad} unreadable line(s) before the last")
    acks, _ = read_log(str(writer_log))
    writes, jobs = result.get("writes", {}), result.get("jobs", {})
    have = {"acknowledged writes": (len(acks), writes.get("acknowledged")),
            "stored ids": (None if history.get("stored") is None else len(history["stored"]),
                           writes.get("stored") if history.get("stored") is not None else None),
            "accepted jobs": (len(history.get("jobs", [])), jobs.get("accepted")),
            "effects": (len(history.get("effects", [])), jobs.get("effects")),
            "database jobs": (None if history.get("db_jobs") is None else len(history["db_jobs"]),
                              result.get("jobs_in_db"))}
    for what, (saved, counted) in have.items():
        if saved is not None and counted is not None and saved != counted:
            gap(f"the saved history has {saved} {what}; the campaign counted {counted}")
    marks = {(e.get("schedule"), e.get("phase")) for e in events if e["kind"] == "schedule"}
    for s in result["schedules"]:
        missing = [p for p in ("start", "end") if (s["name"], p) not in marks]
        if missing:
            gap(f"schedule {s['name']}: no {' or '.join(missing)} record in the event log")
    return out
