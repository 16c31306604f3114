"""The campaign's checker and planner on hand-made histories: each check must
fail on the history it exists for (a lost write, two writers, a double VIP
holder, a job applied twice or never), and a seed must give the same faults."""

from __future__ import annotations

import math
import time

import pytest

from tandem.errors import LabError
from tandem.lab import checker
from tandem.lab.torture import Options, ScheduleResult, analyse
from tandem.lab.torture_plan import KINDS, SHAPES, draw_schedule
from tandem.lab.vipwatch import parse_monitor_line

VIP = "10.1.1.100"


def _vip(host: str, held: bool, at: float) -> dict:
    return {"kind": "vip", "t": at + 0.001, "at": at, "host": host, "address": VIP, "held": held}


def _writable(node: str, on: bool, t: float) -> dict:
    return {"kind": "writable", "t": t, "node": node, "writable": on}


def test_a_clean_vip_move_has_one_holder_at_a_time():
    events = [_vip("node1", True, 1.0), _vip("node1", False, 5.0), _vip("node2", True, 5.01)]
    assert checker.double_vip_holders(events) == []
    assert [i.node for i in checker.vip_intervals(events)[VIP]] == ["node1", "node2"]


def test_two_holders_of_one_vip_are_found():
    events = [_vip("node1", True, 1.0), _vip("node2", True, 4.0), _vip("node1", False, 6.0)]
    [(addr, a, b)] = checker.double_vip_holders(events)
    assert addr == VIP and {a.node, b.node} == {"node1", "node2"}
    # an overlap shorter than the watcher's resolution is tolerated only when asked
    short = [_vip("node1", True, 1.0), _vip("node2", True, 5.00), _vip("node1", False, 5.02)]
    assert checker.double_vip_holders(short) and not checker.double_vip_holders(short, tolerance=0.05)


def test_a_vip_still_held_at_the_end_counts_until_forever():
    events = [_vip("node1", True, 1.0), _vip("node2", True, 100.0)]
    assert len(checker.double_vip_holders(events)) == 1


def _crash(host: str, t: float, down: float | None) -> list[dict]:
    out = [{"kind": "fault", "fault": "crash", "host": host, "t": t}]
    return out + ([{"kind": "host_down", "host": host, "t": down}] if down is not None else [])


def test_a_crashed_host_holds_its_vip_and_stays_writable_until_it_is_down():
    """Killing a host's processes and pulling its cables takes time (~0.9 s under
    load): a takeover inside that time is two holders and two writers."""
    early = [_vip("node1", True, 1.0), *_crash("node1", 10.0, 10.9), _vip("node2", True, 10.5)]
    [(_, a, b)] = checker.double_vip_holders(early)
    assert (a.node, a.end, b.node) == ("node1", 10.9, "node2")
    late = [_vip("node1", True, 1.0), *_crash("node1", 10.0, 10.9), _vip("node2", True, 11.5)]
    assert checker.double_vip_holders(late) == []
    writers = [_writable("node1", True, 1.0), *_crash("node1", 10.0, 10.9), _writable("node2", True, 10.5)]
    [(a, b)] = checker.overlapping_writers(writers)
    assert (a.node, a.end, b.node) == ("node1", 10.9, "node2")
    # torture 234:46: a promotion that finished after the crash began (the daemon still
    # ran) is writable until the host is down, not until its next crash
    [fault, down] = _crash("node1", 10.0, 10.2)
    dying = [fault, _writable("node1", True, 10.1), _vip("node1", True, 10.15), down,
             _writable("node2", True, 15.0), _vip("node2", True, 15.0), *_crash("node1", 50.0, 50.1)]
    assert checker.overlapping_writers(dying) == []
    assert [(i.node, i.start, i.end) for i in checker.writable_intervals(dying)][0] == ("node1", 10.1, 10.2)
    assert checker.double_vip_holders(dying) == []
    # a history from before `host_down` was recorded: the crash itself ends them
    old = [_vip("node1", True, 1.0), *_crash("node1", 10.0, None), _vip("node2", True, 10.5)]
    assert checker.double_vip_holders(old) == []
    # each crash is paired with its own `host_down`
    ends = checker.crash_ends([*_crash("node1", 10.0, 10.9), *_crash("node1", 50.0, 50.2),
                               *_crash("node2", 60.0, None)])
    assert ends == {("node1", 10.0): 10.9, ("node1", 50.0): 50.2, ("node2", 60.0): 60.0}


def test_a_crashed_hosts_volume_is_writable_until_its_processes_are_killed():
    """Review 29: `host_down` (cables out) comes before the kill; a Primary already
    cut off from its peer completes local writes until its daemon dies (torture
    247:6: `writable False` 2 ms after `host_down`). The writable interval ends at
    `host_killed`; histories from before it at the nemesis's record of the crash
    (written once the kill returned); the VIPs still end at `host_down`."""
    killed = {"kind": "host_killed", "host": "node1", "t": 10.8}
    writers = [_writable("node1", True, 1.0), *_crash("node1", 10.0, 10.2), killed,
               _writable("node2", True, 10.5)]
    [(a, b)] = checker.overlapping_writers(writers)
    assert (a.node, a.end, b.node) == ("node1", 10.8, "node2")
    assert checker.crash_ends(writers) == {("node1", 10.0): 10.2}
    assert checker.crash_ends(writers, "killed") == {("node1", 10.0): 10.8}
    # a writable that opened after the crash began also ends at the kill
    late_open = [*_crash("node1", 10.0, 10.2), _writable("node1", True, 10.3), killed]
    assert [(i.start, i.end) for i in checker.writable_intervals(late_open)] == [(10.3, 10.8)]
    # an old history: the nemesis's record of the crash, not another host's
    nemesis = {"kind": "nemesis", "fault_kind": "crash", "phase": "start", "detail": "crashed node1",
               "t": 10.9}
    other = {**nemesis, "detail": "crashed node2", "t": 10.6}
    old = [_writable("node1", True, 1.0), *_crash("node1", 10.0, 10.2), other, nemesis,
           _writable("node2", True, 10.5)]
    [(a, _)] = checker.overlapping_writers(old)
    assert a.end == 10.9
    assert checker.overlapping_writers([*old[:-1], _writable("node2", True, 11.0)]) == []
    # no record of the kill at all: `host_down`, as before
    assert checker.crash_ends(_crash("node1", 10.0, 10.2), "killed") == {("node1", 10.0): 10.2}


def test_a_crashed_host_holds_no_vip_until_its_cables_are_back():
    """A look at a crashed host can find its VIP before the crash removes the
    addresses; that holds nothing while the cables are out. If it was never seen
    removed, the address comes back held with the cables (the restart)."""
    restart = {"kind": "heal", "fault": "restart", "host": "node1", "t": 20.0}
    seen = [_vip("node1", True, 1.0), *_crash("node1", 10.0, 10.2), _vip("node1", True, 10.5),
            _vip("node2", True, 12.0)]
    assert checker.double_vip_holders(seen) == []
    [(_, a, b)] = checker.double_vip_holders([*seen, restart])
    assert {(a.node, a.start), (b.node, b.start)} == {("node1", 20.0), ("node2", 12.0)}
    removed = [*seen, _vip("node1", False, 11.0), restart]
    assert checker.double_vip_holders(removed) == []
    # torture 256:7: a look that read the address just before the crash removed it,
    # stamped after the monitor's report of the deletion, brings back nothing
    stale_look = {**_vip("node1", True, 11.0005), "source": "restart"}
    assert checker.double_vip_holders([*seen, _vip("node1", False, 11.0), stale_look, restart]) == []
    # torture 254:0: the monitor, killed with its host, missed the deletion; the look saw it
    looks = [{**_vip("node1", False, 10.3), "source": "restart", "looked_from": 10.25}]
    assert checker.double_vip_holders([*_crash("node1", 10.0, 10.2), *looks, _vip("node2", True, 12.0),
                                       restart, _vip("node1", True, 1.0)]) == []


def test_a_resubmitted_job_is_explained_by_its_orphan_once():
    """The client lost the answer to j0 (start v1) and sent it again as j1: j0 did it."""
    jobs = [{"jobid": "j1", "command": "startVirtualMachine", "status": 1, "vm": "v1"},
            {"jobid": "j2", "command": "startVirtualMachine", "status": 1, "vm": "v1"}]
    effects = [{"request_id": "j0", "op": "start", "vm": "v1"}]
    out = checker.job_violations(jobs, effects)
    assert out == ["job j2 (startVirtualMachine): reported done but never applied on the host"]
    other_vm = checker.job_violations(jobs[:1], [{"request_id": "j0", "op": "start", "vm": "v2"}])
    assert other_vm and "never applied" in other_vm[0]
    assert checker.job_violations(jobs[:1], effects) == []


def test_a_job_reported_done_before_the_host_did_it_is_a_violation():
    """Review 29: the checks took any effect of a job, or any orphan of the same
    operation on the same VM, whenever it happened. With the time the client saw
    the job done, the effect that explains it must have ended before that."""
    offset = 1000.0  # wall - monotonic
    events = [{"kind": "x", "t": 1.0, "wall": 1001.0}, {"kind": "x", "t": 2.0, "wall": 1002.0}]
    assert checker.wall_offset(events) == offset and checker.wall_offset([]) is None
    job = {"jobid": "j1", "command": "startVirtualMachine", "status": 1, "vm": "v1", "done": 10.0}
    own = {"request_id": "j1", "op": "start", "vm": "v1", "start": 1009.0, "end": 1009.5}
    assert checker.job_violations([job], [own], offset=offset) == []
    early = checker.job_violations([job], [{**own, "end": 1011.0}], offset=offset)
    assert len(early) == 1 and "before its effect on the host ended" in early[0]
    assert checker.job_violations([job], [{**own, "end": 1011.0}]) == []  # no clock: not judged
    assert checker.job_violations([{**job, "done": None}], [{**own, "end": 1011.0}], offset=offset) == []
    # orphans: one that ended in time explains the job; one that ended after does not
    orphan = {**own, "request_id": "j0"}
    assert checker.job_violations([job], [orphan], offset=offset) == []
    late = checker.job_violations([job], [{**orphan, "end": 1012.0}], offset=offset)
    assert len(late) == 1 and "that could explain it ended at 1012.000, after" in late[0]
    # each orphan explains one job: the one closest to its job's time, so an
    # earlier job keeps the earlier orphan whatever the order the jobs come in
    # (a stop between the two starts: two in a row is itself a violation, see below)
    stop = {"request_id": "j5", "op": "stop", "vm": "v1", "start": 1014.5, "end": 1015.0}
    jobs = [{**job, "jobid": "j2", "done": 20.0}, {**job, "jobid": "j3", "done": 10.0},
            {**job, "jobid": "j5", "command": "stopVirtualMachine", "done": 15.5}]
    orphans = [{**orphan, "end": 1009.0}, {**orphan, "request_id": "j4", "start": 1018.5, "end": 1019.0}]
    assert checker.job_violations(jobs, [*orphans, stop], offset=offset) == []
    assert len(checker.job_violations(jobs, [*orphans[1:], stop], offset=offset)) == 1


def test_a_step_of_the_wall_clock_is_not_taken_for_jobs_reported_early():
    """The wall clock stepped 11.6 s forward mid-campaign (NTP, session 37): with one
    median offset, every job after the step looked reported done before its effect
    ended. The offset of the event-log record nearest in time judges each job."""
    before = [{"kind": "x", "t": float(t), "wall": 1000.0 + t} for t in range(0, 60)]
    after = [{"kind": "x", "t": float(t), "wall": 1011.6 + t} for t in range(60, 90)]
    events = before + after
    job = {"jobid": "j1", "command": "startVirtualMachine", "status": 1, "vm": "v1", "done": 80.0}
    own = {"request_id": "j1", "op": "start", "vm": "v1", "start": 1090.6, "end": 1091.1}  # new clock
    median = checker.wall_offset(events)
    assert median == 1000.0
    assert len(checker.job_violations([job], [own], offset=median)) == 1  # the false report
    by_time = checker.wall_offsets(events)
    assert by_time is not None and by_time(10.0) == 1000.0 and abs(by_time(80.0) - 1011.6) < 1e-6
    assert checker.job_violations([job], [own], offset=by_time) == []
    # and a job really reported early after the step is still caught
    late = {**own, "end": 1093.0}
    assert len(checker.job_violations([job], [late], offset=by_time)) == 1
    assert checker.wall_offsets([]) is None


def test_effects_on_a_vm_in_an_order_that_makes_no_sense_are_a_violation():
    """Review 30: the simulated host applies a stop to a Stopped VM, and the checks
    explained a job that succeeded without touching the host by any orphan of the
    same operation, whatever came after it. Lost answer O1 (stop, applied); then
    stop J2 is applied on the Stopped VM (a stale state); start J3; stop J4 succeeds
    without an operation although the VM is Running: both passed."""
    offset = 1000.0
    create = {"request_id": "j0", "op": "create", "vm": "v1", "start": 1000.5, "end": 1001.0,
              "state": "Running"}
    o1 = {"request_id": "o1", "op": "stop", "vm": "v1", "start": 1001.5, "end": 1002.0, "state": "Stopped"}
    j2 = {"request_id": "j2", "op": "stop", "vm": "v1", "start": 1003.5, "end": 1004.0, "state": "Stopped"}
    j3 = {"request_id": "j3", "op": "start", "vm": "v1", "start": 1005.5, "end": 1006.0, "state": "Running"}
    jobs = [{"jobid": "j0", "command": "deployVirtualMachine", "status": 1, "vm": "v1", "done": 1.2},
            {"jobid": "j2", "command": "stopVirtualMachine", "status": 1, "vm": "v1", "done": 4.2},
            {"jobid": "j3", "command": "startVirtualMachine", "status": 1, "vm": "v1", "done": 6.2},
            {"jobid": "j4", "command": "stopVirtualMachine", "status": 1, "vm": "v1", "done": 8.2}]
    out = checker.job_violations(jobs, [create, o1, j2, j3], offset=offset)
    assert len(out) == 2, out
    assert "job j2: stop of VM v1 applied on the host while the VM was Stopped" in out[0]
    assert "job j4 (stopVirtualMachine): reported done at 1008.200" in out[1] and "was Running" in out[1]
    # the legitimate history: O1 applied, then J2 (the client's resubmission) finds
    # the VM Stopped and succeeds without an operation; J3 starts it, J4 stops it
    j4 = {"request_id": "j4", "op": "stop", "vm": "v1", "start": 1007.5, "end": 1008.0, "state": "Stopped"}
    assert checker.job_violations(jobs, [create, o1, j3, j4], offset=offset) == []
    # a failed job leaves the VM in Error, from which a stop goes to the host whatever its state
    failed = {"jobid": "j1", "command": "stopVirtualMachine", "status": 2, "vm": "v1", "done": 3.0}
    assert checker.job_violations([*jobs[:3], failed], [create, o1, j2, j3], offset=offset) == []


def test_jobs_exactly_once():
    jobs = [{"jobid": "j1", "command": "deployVirtualMachine", "status": 1},
            {"jobid": "j2", "command": "stopVirtualMachine", "status": 1},
            {"jobid": "j3", "command": "startVirtualMachine", "status": 2}]
    effects = [{"request_id": "j1", "op": "create", "vm": "v1"},
               {"request_id": "j2", "op": "stop", "vm": "v1"}]
    assert checker.job_violations(jobs, effects) == []
    twice = checker.job_violations(jobs, [*effects, {"request_id": "j2", "op": "stop", "vm": "v1"}])
    assert len(twice) == 1 and "applied 2 times" in twice[0]
    lost = checker.job_violations(jobs, effects[:1])
    assert len(lost) == 1 and "never applied" in lost[0]
    pending = checker.job_violations([{**jobs[0], "status": 0}], [])
    assert "never completed" in pending[0]
    conflict = checker.job_violations(jobs, [*effects, {"request_id": "j9", "op": "start", "vm": "v1",
                                                        "conflict": True}])
    assert len(conflict) == 1 and "while another operation" in conflict[0]


def test_unavailability_counts_the_whole_gap_around_a_fault():
    acks = [0.0, 0.1, 0.2, 3.2, 3.3]
    assert math.isclose(checker.unavailability(acks, 1.0, 2.0), 3.0)  # gap 0.2 -> 3.2 spans the fault
    assert math.isclose(checker.unavailability(acks, 3.25, 3.28), 0.1)
    assert checker.unavailability(acks, 4.0, 5.0) == float("inf")  # never available again
    assert checker.percentiles([1.0, 2.0, 3.0, 4.0]) == {"p50": 2.0, "p90": 4.0, "p99": 4.0, "p100": 4.0}


def test_monitor_lines_are_parsed():
    add = "[2026-11-25T06:15:44.357049] 23: pub0    inet 10.1.1.100/24 scope global pub0\\       valid_lft"
    dele = "[2026-11-25T06:15:44.582718] Deleted 23: pub0    inet 10.1.1.100/24 scope global pub0\\"
    t1, a1, h1 = parse_monitor_line(add)
    t2, a2, h2 = parse_monitor_line(dele)
    assert (a1, h1, a2, h2) == ("10.1.1.100", True, "10.1.1.100", False)
    assert math.isclose(t2 - t1, 0.225669, abs_tol=1e-6)
    assert parse_monitor_line("[2026-11-25T06:15:44.357049] 23: pub0 inet6 fe80::1/64") is None


def test_a_seed_gives_the_same_schedules_and_covers_every_fault():
    a = [draw_schedule(7, i, 20).to_json() for i in range(200)]
    assert a == [draw_schedule(7, i, 20).to_json() for i in range(200)]
    assert a != [draw_schedule(8, i, 20).to_json() for i in range(200)]
    faults = [f for s in a for f in s["faults"]]
    assert {f["kind"] for f in faults} == set(KINDS)
    assert {f["params"]["shape"] for f in faults if f["kind"] == "partition"} == set(SHAPES)
    assert any(len(s["faults"]) > 1 for s in a)  # combinations
    assert all(f["start"] >= 0 and f["start"] + f["hold"] <= 20 + 1e-9 for f in faults)


def test_analyse_turns_each_broken_history_into_a_violation():
    sched = draw_schedule(1, 0, 10)
    r = ScheduleResult(sched, t_start=0.0, t_healed=10.0, t_converged=12.0, t_end=15.0)
    r.faults = [{"index": 0, "kind": "crash", "describe": "crash node1", "start": 2.0, "end": 6.0}]
    acks = [{"id": f"w-{i}", "sent": i * 0.1, "acked": i * 0.1 + 0.01} for i in range(150) if not 20 < i < 40]
    stored = {a["id"] for a in acks}
    clean = [_writable("node1", True, 0.0), {"kind": "fault", "fault": "crash", "host": "node1", "t": 2.0},
             _writable("node2", True, 3.5), _vip("node1", True, 0.0), _vip("node1", False, 2.0),
             _vip("node2", True, 3.6)]
    jobs = [{"jobid": "j1", "command": "deployVirtualMachine", "status": 1}]
    effects = [{"request_id": "j1", "op": "create", "vm": "v1"}]
    ok = analyse(clean, acks, [], stored, jobs, effects, [r], Options(), None)
    assert ok["violations"] == []
    assert ok["faults_by_kind"] == {"crash": 1} and math.isclose(ok["faults"][0]["unavailable_s"], 2.0)

    def checks(events=clean, stored=stored, effects=effects):
        out = analyse(events, acks, [], stored, jobs, effects, [r], Options(), None)
        return [v["check"] for v in out["violations"]]

    assert checks(stored=stored - {"w-77"}) == ["lost-write"]
    assert checks(events=[*clean, _writable("node1", True, 4.0)]) == ["two-writers"]
    restarted = {"kind": "heal", "fault": "restart", "host": "node1", "t": 4.5}
    assert checks(events=[*clean, restarted, _vip("node1", True, 5.0)]) == ["two-vip-holders"]
    assert checks(effects=effects * 2) == ["jobs"]


def test_report_table_json_and_timeline(tmp_path):
    import json

    from rich.console import Console

    from tandem.lab import torture_report as rep
    sched = draw_schedule(1, 0, 10)
    r = ScheduleResult(sched, t_start=0.0, t_healed=10.0, t_converged=12.0, t_end=15.0)
    r.faults = [{"index": 0, "kind": "crash", "describe": "crash node1", "start": 2.0, "end": 6.0}]
    acks = [{"id": f"w-{i}", "sent": i * 0.1, "acked": i * 0.1 + 0.01} for i in range(150) if not 20 < i < 40]
    events = [_writable("node1", True, 0.0), {"kind": "fault", "fault": "crash", "host": "node1", "t": 2.0},
              _writable("node2", True, 3.5), _vip("node1", True, 0.0), _vip("node1", False, 2.0),
              _vip("node2", True, 3.6)]
    result = analyse(events, acks, [], {a["id"] for a in acks}, [], [], [r], Options(duration=10), None)
    rep.write_json(result, tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())["faults_by_kind"] == {"crash": 1}
    console = Console(record=True, width=120)
    console.print(rep.summary_table(result))
    assert "crash" in console.export_text()
    assert any(line.startswith("violations: 0") for line in rep.summary_lines(result))
    rep.timeline_png(rep.pick_schedule(result), events, acks, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_crash_ends_the_hosts_vip_holding():
    """The watcher's monitor on a crashed host dies with it; the crash itself ends the holding."""
    crash = {"kind": "fault", "fault": "crash", "host": "node1", "t": 2.0}
    events = [_vip("node1", True, 1.0), crash, _vip("node2", True, 3.0), _vip("node1", False, 60.0)]
    assert checker.double_vip_holders(events) == []
    assert checker.double_vip_holders([_vip("node1", True, 1.0), _vip("node2", True, 3.0)])


def test_campaigns_combine_into_one_record_and_bad_files_are_one_line(tmp_path):
    """`tandem lab torture-summary`: counts add up, percentiles come from every fault
    (not from the runs' percentiles), a violation anywhere shows; junk is refused."""
    import json

    from tandem.lab import torture_report as rep
    from tests.conftest import run_tandem
    dirs = []
    for seed, gap, lost in ((1, (20, 40), set()), (2, (10, 90), {"w-5"})):
        sched = draw_schedule(seed, 0, 10)
        r = ScheduleResult(sched, t_start=0.0, t_healed=10.0, t_converged=12.0, t_end=15.0)
        r.faults = [{"index": 0, "kind": "crash", "describe": "crash node1", "start": 2.0, "end": 6.0}]
        acks = [{"id": f"w-{i}", "sent": i * 0.1, "acked": i * 0.1 + 0.01} for i in range(150)
                if not gap[0] < i < gap[1]]
        crash = {"kind": "fault", "fault": "crash", "host": "node1", "t": 2.0}
        events = [_writable("node1", True, 0.0), crash, _writable("node2", True, 3.5)]
        res = analyse(events, acks, [], {a["id"] for a in acks} - lost, [], [], [r], Options(seed=seed), None)
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        rep.write_json(res, d / "results.json")
        dirs.append(d)
    proc = run_tandem("lab", "torture-summary", *map(str, dirs), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["schedules_run"] == 2 and out["faults_by_kind"] == {"crash": 2}
    assert [v["check"] for v in out["violations"]] == ["lost-write"]
    u = sorted(json.loads((d / "results.json").read_text())["faults"][0]["unavailable_s"] for d in dirs)
    assert out["unavailability_by_kind"]["crash"] == {"p50": u[0], "p90": u[1], "p99": u[1], "p100": u[1]}
    table = run_tandem("lab", "torture-summary", *map(str, dirs))
    assert table.returncode == 0 and "seed 1 1 schedules (0 violations), seed 2 1 schedules (1 violations)" \
        in table.stdout, table.stdout
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2")
    bad = run_tandem("lab", "torture-summary", str(dirs[0]), str(junk))
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and len(lines) == 1
    assert lines[0].startswith(f"tandem: {junk}: not a campaign's"), lines


def test_a_paused_primary_stops_being_writable_at_its_lease_deadline():
    """Torture 16:10: node1's volume daemon was SIGSTOPped, node2 promoted after the
    lease, and node1 recorded 'writable false' only when it ran again. No write starts
    after the deadline it records as `since`; without it the overlap is real."""
    lease_end = {"kind": "writable", "node": "node1", "writable": False, "t": 9.0, "since": 4.5,
                 "reason": "the agent's write lease expired"}
    events = [_writable("node1", True, 0.0), _writable("node2", True, 5.0), lease_end]
    assert checker.overlapping_writers(events) == []
    assert checker.writable_intervals(events)[0].end == 4.5
    late = {**lease_end, "since": 5.5}
    assert len(checker.overlapping_writers([*events[:2], late])) == 1
    no_since = {k: v for k, v in lease_end.items() if k != "since"}
    assert len(checker.overlapping_writers([*events[:2], no_since])) == 1


def test_the_write_gap_is_the_longest_pause_around_the_fault_not_the_first_ack_after_it():
    """A write the dying primary acknowledged just after the fault was recorded made the
    demo report 0.004 s of unavailability; the writes really stopped for 1.4 s."""
    acks = [{"acked": t} for t in (9.990, 9.998, 10.002, 11.400, 11.410)]
    assert abs(checker.write_gap(acks, 10.0) - 1.398) < 1e-9
    assert checker.writes_resumed(acks, 10.0) == 11.400
    assert checker.write_gap([{"acked": 9.0}], 10.0) is None  # nothing after the fault
    assert checker.write_gap([{"acked": 11.0}], 10.0) is None  # nothing before it


def test_a_write_completed_after_the_lease_deadline_stretches_the_writable_interval():
    """The volume says it stopped being writable at its lease deadline (4.5); a write
    that completes at 6.0 (held, then let through) is evidence the checker takes over
    that word: node2, writable from 5.0, overlaps it."""
    lease_end = {"kind": "writable", "node": "node1", "writable": False, "t": 9.0, "since": 4.5}
    done = {"kind": "write_completed", "node": "node1", "t": 6.0}
    events = [_writable("node1", True, 0.0), _writable("node2", True, 5.0), lease_end]
    assert checker.overlapping_writers(events) == []
    [(a, b)] = checker.overlapping_writers([*events, done])
    assert (a.node, a.end, b.node) == ("node1", 6.0, "node2")
    # inside its own interval (a fence holding I/O of a writable node): nothing new
    assert checker.overlapping_writers([_writable("node1", True, 0.0), {**done, "t": 1.0}]) == []
    # a completion with no interval at all is a point the other node must not cover
    assert checker.overlapping_writers([_writable("node2", True, 0.0), {**done, "t": 1.0}])


def _pause(node: str, t: float, heal: bool = False, pid: int = 7, name: str = "volume-db") -> dict:
    return {"kind": "heal" if heal else "fault", "fault": "pause", "host": node, "name": name,
            "pid": pid, "t": t}


def test_a_stopped_volume_daemon_completes_no_write_until_it_runs_again():
    """Torture 87:71: node2's volume daemon was SIGSTOPped as Primary, node1 promoted,
    then node2 crashed: the daemon never ran again to record its lease deadline, so its
    interval lasted until the crash and overlapped node1's. A stopped daemon answers
    no FUSE request: its interval ends at the SIGSTOP."""
    crash = {"kind": "fault", "fault": "crash", "host": "node2", "t": 9.0}
    events = [_writable("node2", True, 0.0), _pause("node2", 3.0), _writable("node1", True, 5.0), crash]
    assert checker.overlapping_writers(events) == []
    assert [(i.node, i.start, i.end) for i in checker.writable_intervals(events)] == \
        [("node2", 0.0, 3.0), ("node1", 5.0, float("inf"))]
    # resumed (the same pid), it is writable again until its own word ends it
    resumed = [*events[:3], _pause("node2", 8.0, heal=True)]
    assert len(checker.overlapping_writers(resumed)) == 1
    lease_end = {"kind": "writable", "node": "node2", "writable": False, "t": 8.01, "since": 3.5}
    assert checker.overlapping_writers([*resumed, lease_end]) == []  # 86:38 with the volume's fix
    # ... and a write it completes after resuming is still seen (86:38 before that fix)
    done = {"kind": "write_completed", "node": "node2", "t": 8.02}
    assert len(checker.overlapping_writers([*resumed, lease_end, done])) == 1
    # the pause of another process, or the heal of an older pid, does not end anything
    assert len(checker.overlapping_writers([events[0], _pause("node2", 3.0, name="agent"),
                                           events[2]])) == 1
    other_pid = [*events[:3], _pause("node2", 8.0, heal=True, pid=8)]
    assert checker.overlapping_writers(other_pid) == []


def test_jobs_the_client_never_heard_of_are_held_to_the_same_rules():
    jobs = [{"jobid": "j1", "command": "startVirtualMachine", "status": 1, "vm": "v1"}]
    # an unknown job applied twice
    twice = checker.job_violations([], [{"request_id": "u1", "op": "start", "vm": "v1"}] * 2)
    assert twice == ["job u1 (unknown to the client): applied 2 times on the host"]
    # an orphan `stop` does not excuse a `start` that never happened
    stray = checker.job_violations(jobs, [{"request_id": "u1", "op": "stop", "vm": "v1"}])
    assert stray and "never applied" in stray[0]
    assert checker.job_violations(jobs, [{"request_id": "u1", "op": "start", "vm": "v1"}]) == []
    # with the database's jobs: an effect without a job, an unknown job left pending
    effects = [{"request_id": "j1", "op": "start", "vm": "v1"}]
    db = [{"jobid": "j1", "status": 1}, {"jobid": "u2", "status": 0}]
    out = checker.job_violations(jobs, [*effects, {"request_id": "x", "op": "stop", "vm": "v1"}], db)
    assert any("no such job in the database" in v for v in out), out
    assert any("u2 (unknown to the client): still pending" in v for v in out), out
    assert checker.job_violations(jobs, effects, [{"jobid": "j1", "status": 1}]) == []


def test_an_empty_table_an_aborted_campaign_and_a_partial_verify_are_violations():
    from tandem.lab.torture import verify_violations
    sched = draw_schedule(1, 0, 10)
    r = ScheduleResult(sched, t_start=0.0, t_healed=10.0, t_converged=12.0, t_end=15.0)
    acks = [{"id": f"w-{i}", "sent": i * 0.1, "acked": i * 0.1 + 0.01} for i in range(10)]
    empty = analyse([], acks, [], set(), [], [], [r], Options(), None)
    assert len([v for v in empty["violations"] if v["check"] == "lost-write"]) == 10
    stopped = analyse([], acks, [], {a["id"] for a in acks}, [], [], [r], Options(), "schedule 1:0 overran")
    assert [v["check"] for v in stopped["violations"]] == ["aborted"]
    whole = {"out_of_sync_blocks": 0, "finished": True, "done_bytes": 8192, "total_bytes": 8192}
    assert verify_violations(whole) == []
    assert verify_violations({**whole, "done_bytes": 4096})
    assert verify_violations({**whole, "finished": False})
    assert verify_violations({"finished": True, "done_bytes": 1, "total_bytes": 1})  # no comparison count
    assert "2 blocks differ" in verify_violations({**whole, "out_of_sync_blocks": 2})[0]
    watcher = analyse([{"kind": "vipwatch_failed", "t": 1.0, "host": "node2", "error": "OSError: x"}],
                      acks, [], {a["id"] for a in acks}, [], [], [r], Options(), None)
    assert [v["check"] for v in watcher["violations"]] == ["two-vip-holders"]


def test_the_vip_watcher_never_takes_a_failed_or_overtaken_look_for_a_release(tmp_path):
    """A snapshot whose `ip` failed recorded "not held" for every VIP, and the monitor's
    later report of the same holding was dropped as no change: the holding vanished
    from the history. So did a look that a monitor report overtook."""
    from types import SimpleNamespace

    from tandem.lab.events import EventLog, monotonic
    from tandem.lab.vipwatch import VipWatch
    log = EventLog(tmp_path / "events.jsonl")
    w = VipWatch(SimpleNamespace(events=log, spec=SimpleNamespace(host_names=["node1"])), [VIP], ["node1"])
    began = monotonic()
    w._set("node1", VIP, True, monotonic(), source="monitor")  # reported after the look began
    w._set("node1", VIP, False, monotonic(), source="converge", unless_reported_since=began)
    assert w.held[("node1", VIP)] is True
    assert [e["held"] for e in log.read("vip")] == [True]
    w._set("node1", VIP, False, monotonic(), source="converge", unless_reported_since=monotonic())
    assert [e["held"] for e in log.read("vip")] == [True, False]


def test_the_vip_watcher_keeps_the_kernels_earlier_stamp(tmp_path):
    """Review 29 (torture 220:50): a look recorded a new holding at the moment `ip`
    returned, and the monitor's report of the same change, stamped 40 ms earlier by
    the kernel, was dropped as no change; the holding started late in the history.
    And the look after a host's monitor died (its host crashed) records what it
    finds even if unchanged: the checker brings it back with the cables."""
    from types import SimpleNamespace

    from tandem.lab.events import EventLog
    from tandem.lab.vipwatch import VipWatch
    log = EventLog(tmp_path / "events.jsonl")
    w = VipWatch(SimpleNamespace(events=log, spec=SimpleNamespace(host_names=["node1"])), [VIP], ["node1"])
    w._set("node1", VIP, True, 10.171, source="reconcile")
    w._set("node1", VIP, True, 10.131, source="monitor")  # the same change, as the kernel stamped it
    w._set("node1", VIP, True, 10.2, source="monitor")  # later and unchanged: nothing new
    w._set("node1", VIP, True, 15.0, source="reconcile")
    assert [(e["at"], e["source"]) for e in log.read("vip")] == [(10.171, "reconcile"), (10.131, "monitor")]
    assert [(i.start, i.end) for i in checker.vip_intervals(log.read())[VIP]] == [(10.131, float("inf"))]


def test_a_saved_campaign_is_judged_again_by_todays_checks(tmp_path):
    """`tandem lab torture-recheck`: the saved history through the current checker,
    which finds what the campaign's own (older, laxer) run did not: here a verify
    that compared half the volume and a write completed after the lease deadline."""
    import json

    from tandem.lab import torture_report as rep
    from tests.conftest import run_tandem
    sched = draw_schedule(3, 0, 10)
    r = ScheduleResult(sched, t_start=0.0, t_healed=10.0, t_converged=12.0, t_end=15.0)
    r.verify = {"out_of_sync_blocks": 0, "finished": True, "done_bytes": 4096, "total_bytes": 8192}
    acks = [{"id": f"w-{i}", "sent": i * 0.1, "acked": i * 0.1 + 0.01} for i in range(50)]
    events = [_writable("node1", True, 0.0), _writable("node2", True, 5.0),
              {"kind": "writable", "node": "node1", "writable": False, "t": 9.0, "since": 4.5},
              {"kind": "write_completed", "node": "node1", "t": 6.0}, *_marks(r)]
    res = analyse(events[:3], acks, [], {a["id"] for a in acks}, [], [], [r], Options(seed=3), None)
    assert res["violations"] == []  # what the campaign itself saw (before both checks existed)
    rep.write_json(res, tmp_path / "results.json")
    rep.write_json({"stored": [a["id"] for a in acks], "jobs": [], "effects": []}, tmp_path / "history.json")
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "writer.jsonl").write_text("".join(json.dumps(a) + "\n" for a in acks))
    proc = run_tandem("lab", "torture-recheck", str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 violation(s) (the campaign reported 0)" in proc.stdout, proc.stdout
    assert "did not compare the whole volume" in proc.stdout and "two-writers" in proc.stdout
    (tmp_path / "writer.jsonl").unlink()
    bad = run_tandem("lab", "torture-recheck", str(tmp_path))
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "no writer.jsonl" in bad.stderr


def test_a_write_missing_at_a_lookup_and_unread_jobs_are_violations_even_if_the_end_looks_fine():
    """A lookup through the DB VIP after a schedule that did not find an acknowledged
    id is a stale read (a client saw the database without it), even when the final
    read finds it; jobs that could not be read back from the management database
    leave jobs unchecked. Both were only printed before (review, session 20)."""
    sched = draw_schedule(3, 0, 10)
    r = ScheduleResult(sched, t_start=0.0, t_healed=10.0, t_converged=12.0, t_end=15.0)
    r.verify = {"out_of_sync_blocks": 0, "finished": True, "done_bytes": 8192, "total_bytes": 8192}
    acks = [{"id": f"w-{i}", "sent": i * 0.1, "acked": i * 0.1 + 0.01} for i in range(50)]
    stored = {a["id"] for a in acks}
    clean = analyse([], acks, [], stored, [], [], [r], Options(seed=3), None, [])
    assert clean["violations"] == []
    missing = [{"schedule": sched.name, "id": "w-7", "acked": 0.71}]
    stale = analyse([], acks, [], stored, [], [], [r], Options(seed=3), None, [], missing)
    [v] = stale["violations"]
    assert v["check"] == "lost-write" and "w-7" in v["what"] and v["schedule"] == sched.name
    lost = analyse([], acks, [], stored - {"w-7"}, [], [], [r], Options(seed=3), None, [], missing)
    assert [v["what"] for v in lost["violations"]] == ["acknowledged id w-7 missing"]  # once
    unread = analyse([], acks, [], stored, [], [], [r], Options(seed=3), None, None, jobs_unread=True)
    [v] = unread["violations"]
    assert v["check"] == "jobs" and "could not be read back" in v["what"]


def _ack(i: int, sent: float, acked: float, node: str | None) -> dict:
    rec = {"id": f"w-{i}", "sent": sent, "acked": acked}
    if node is not None:
        rec["by"] = f"/var/tmp/tandem-lab/tq1/hosts/{node}/run/mariadb/mariadb/server/mysqld.sock"
    return rec


def test_an_ack_from_a_node_outside_its_writable_intervals_is_a_two_writers_violation():
    """The writable intervals come from the volume's own events; the writer says which
    node's server committed each ack. A commit inside a window in which its node was
    never writable (by the intervals) means the history missed a term: node1 told us
    it stopped at its lease deadline (4.5) but committed a write sent at 5.2."""
    lease_end = {"kind": "writable", "node": "node1", "writable": False, "t": 9.0, "since": 4.5}
    events = [_writable("node1", True, 0.0), _writable("node2", True, 5.0), lease_end]
    fine = [_ack(1, 1.0, 1.01, "node1"), _ack(2, 4.49, 4.6, "node1"), _ack(3, 5.5, 5.6, "node2"),
            _ack(4, 0.5, 0.6, None)]
    assert checker.overlapping_writers(events) == []
    assert checker.acks_outside_writable(fine, events) == []
    late = _ack(5, 5.2, 5.3, "node1")
    assert checker.acks_outside_writable([*fine, late], events) == [(late, "node1")]
    # a node with no interval at all, and one before its first
    assert checker.acks_outside_writable([_ack(6, 1.0, 1.1, "node3")], events)[0][1] == "node3"
    assert checker.acks_outside_writable([_ack(7, 1.0, 1.1, "node2")], events)[0][1] == "node2"
    # the path names its node after "hosts"
    assert checker.serving_node("/x/hosts/node2/run/m.sock") == "node2"
    assert checker.serving_node("/run/mysqld/mysqld.sock") is None

    sched = draw_schedule(1, 0, 10)
    r = ScheduleResult(sched, t_start=0.0, t_healed=10.0, t_converged=12.0, t_end=15.0)
    acks = [*fine, late]
    out = analyse(events, acks, [], {a["id"] for a in acks}, [], [], [r], Options(), None)
    assert [v["check"] for v in out["violations"]] == ["two-writers"]
    assert "w-5 was committed by node1" in out["violations"][0]["what"]


def test_unknown_jobs_that_succeeded_without_an_effect_need_another_jobs_effect():
    """Review, session 22: a job only the database knows of, done without a host
    operation, went unjudged. A deploy always creates a VM: never explained. A start
    or stop the client sent again after losing the answer is explained by an effect
    of that operation on that VM (known to the client or not)."""
    def db(rid, cmd, vm, status=1):
        return {"jobid": rid, "status": status, "command": cmd, "vm": vm}
    start, stop, deploy = "startVirtualMachine", "stopVirtualMachine", "deployVirtualMachine"
    known = [{"jobid": "j1", "command": start, "status": 1, "vm": "v1"}]
    applied = [{"request_id": "j1", "op": "start", "vm": "v1"}]
    # the client's job ran first and applied it; the lost one (u0) found the VM running
    assert checker.job_violations(known, applied, [db("j1", start, "v1"), db("u0", start, "v1")]) == []
    # an unknown deploy that succeeded with nothing created
    out = checker.job_violations(known, applied, [db("j1", start, "v1"), db("u0", deploy, "v9")])
    assert out == ["job u0 (unknown to the client, deployVirtualMachine of VM v9): succeeded in the"
                   " database but created nothing on the host"]
    # an effect of another op or VM explains nothing
    for cmd, vm in ((stop, "v1"), (start, "v2")):
        out = checker.job_violations(known, applied, [db("j1", start, "v1"), db("u0", cmd, vm)])
        assert len(out) == 1 and out[0].startswith("job u0 (unknown") and "never applied" in out[0], out
    # a client that lost the answer again and again sent the same op again and again:
    # one effect explains every later one (each found the VM already there)
    both = [db("u1", stop, "v1"), db("u2", stop, "v1"), db("u3", stop, "v1")]
    assert checker.job_violations([], [{"request_id": "u1", "op": "stop", "vm": "v1"}], both) == []
    assert checker.job_violations(known, applied, [db("j1", start, "v1"), db("u0", start, "v1"),
                                                   db("u5", start, "v1")]) == []
    j2 = [{"jobid": "j2", "command": start, "status": 1, "vm": "v1"}]
    orphan = [{"request_id": "u1", "op": "start", "vm": "v1"}]
    assert checker.job_violations(j2, orphan, [db("j2", start, "v1"), db("u1", start, "v1"),
                                               db("u2", start, "v1")]) == []
    # but none at all: the success is not explained
    out = checker.job_violations([], [], [db("u2", stop, "v1")])
    assert len(out) == 1 and out[0].startswith("job u2 (unknown") and "never applied" in out[0], out
    # failed or effect-less known jobs are judged as before; old histories (no command) skip the rule
    assert checker.job_violations(known, applied, [{"jobid": "j1", "status": 1},
                                                   {"jobid": "u0", "status": 1}]) == []


def test_the_campaign_reads_each_database_jobs_command_and_vm():
    from types import SimpleNamespace

    from tandem.lab.torture import Campaign
    asked = []

    def query_cloud(sql):
        asked.append(sql)
        return [("u0", 1, "deployVirtualMachine", "v9"), ("j1", 2, "startVirtualMachine", "v1")]
    fake = SimpleNamespace(stack=SimpleNamespace(query_cloud=query_cloud))
    rows = Campaign._db_jobs(fake, timeout=0)
    assert rows == [{"jobid": "u0", "status": 1, "command": "deployVirtualMachine", "vm": "v9"},
                    {"jobid": "j1", "status": 2, "command": "startVirtualMachine", "vm": "v1"}]
    assert asked == ["SELECT id, status, cmd, instance_id FROM async_job"]


def test_a_paused_process_is_recorded_resumed_before_it_runs_again(monkeypatch):
    """Review, session 22: the heal event came after SIGCONT, so a resumed volume
    daemon ran a moment outside every writable interval. Now it is recorded while
    the process is still stopped; a SIGCONT that fails pauses it again in the history."""
    import os
    import signal
    import subprocess
    import time
    from types import SimpleNamespace

    from tandem.lab import torture_nemesis
    from tandem.lab.supervisor import start_ticks

    def state(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    recorded = []

    class Events:
        def record(self, kind, **fields):
            recorded.append({"kind": kind, **fields, "state": state(fields["pid"])})

    nemesis = torture_nemesis.Nemesis(SimpleNamespace(lab=SimpleNamespace(events=Events()), leader=None))
    child = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        for _ in range(1000):
            if state(child.pid) == "T":
                break
            time.sleep(0.01)
        nemesis.paused[("node1", "volume-db")] = (child.pid, start_ticks(child.pid))
        nemesis._heal_pause({"host": "node1", "name": "volume-db"})
        assert [(e["kind"], e["state"]) for e in recorded] == [("heal", "T")]  # still stopped then
        assert nemesis.paused == {}
        # a SIGCONT that fails: paused again to the checker, its writable interval ends
        os.kill(child.pid, signal.SIGSTOP)
        nemesis.paused[("node1", "volume-db")] = (child.pid, start_ticks(child.pid))
        recorded.clear()

        def kill(pid, sig, real=os.kill):
            if sig == signal.SIGCONT:
                raise PermissionError(1, "Operation not permitted")
            real(pid, sig)
        monkeypatch.setattr(torture_nemesis.os, "kill", kill)
        with pytest.raises(LabError, match="could not resume volume-db"):
            nemesis._heal_pause({"host": "node1", "name": "volume-db"})
        assert [e["kind"] for e in recorded] == ["heal", "fault"] and recorded[1]["resume_failed"]
        assert ("node1", "volume-db") in nemesis.paused  # still ours to resume
        t = iter(range(10, 100))
        history = [_writable("node1", True, 1.0), _pause("node1", 5.0, pid=child.pid),
                   *({**e, "t": next(t) + 0.5} for e in recorded)]
        assert [(i.start, i.end) for i in checker.writable_intervals(history)] == [(1.0, 5.0), (10.5, 11.5)]
    finally:
        child.kill()
        child.wait()


def test_a_pause_is_recorded_once_every_thread_of_the_process_has_stopped():
    """Torture 205:31: kill(SIGSTOP) returns before a busy multi-threaded process
    stops (one thread is woken to begin the group stop; on a loaded machine the
    others ran on for milliseconds), and a volume daemon completed a commit 7 ms
    after its pause was recorded. The event now comes once /proc shows every thread
    stopped; one never seen stopped ends no interval."""
    import os
    import signal
    import subprocess
    import sys
    from types import SimpleNamespace

    from tandem.lab import torture_nemesis
    from tandem.lab.supervisor import wait_stopped

    def states(pid):
        out = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                out.append(f.read().rsplit(")", 1)[1].split()[0])
        return out

    recorded = []

    class Events:
        def record(self, kind, **fields):
            recorded.append({"kind": kind, **fields, "states": states(fields["pid"])})

    busy = ("import threading\n"
            "def spin():\n    while True: sum(range(1000))\n"
            "for _ in range(6): threading.Thread(target=spin, daemon=True).start()\n"
            "spin()\n")
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        for _ in range(500):
            if len(states(child.pid)) == 7:
                break
            time.sleep(0.01)
        assert len(states(child.pid)) == 7
        assert not wait_stopped(child.pid, timeout=0.05), "running threads are not stopped"
        lab = SimpleNamespace(events=Events(), host_dir=None, read_state=lambda: {"down": []},
                              supervisor=lambda h: SimpleNamespace(
                                  get=lambda n: SimpleNamespace(pid=child.pid),
                                  alive=lambda rec: True))
        nemesis = torture_nemesis.Nemesis(SimpleNamespace(lab=lab, leader=None))
        nemesis._apply_pause({"host": "node1", "name": "volume-db"})
        assert recorded[0]["stopped"] is True and set(recorded[0]["states"]) == {"T"}, recorded
        os.kill(child.pid, signal.SIGCONT)
    finally:
        child.kill()
        child.wait()
    unseen = {**_pause("node2", 3.0), "stopped": False}
    assert [(i.node, i.start, i.end) for i in checker.writable_intervals(
        [_writable("node2", True, 0.0), unseen, _pause("node2", 8.0, heal=True)])] == \
        [("node2", 0.0, float("inf"))]


def _marks(r: ScheduleResult) -> list[dict]:
    """The event log's records of a schedule's start and end."""
    return [{"kind": "schedule", "schedule": r.schedule.name, "phase": "start", "t": r.t_start},
            {"kind": "schedule", "schedule": r.schedule.name, "phase": "end", "t": r.t_end}]


def _one_schedule_with_a_job(t_converged: float = 12.0
                             ) -> tuple[ScheduleResult, list[dict], list[dict], list[dict]]:
    """A finished schedule (whole verify), 50 acknowledged writes, one started VM's
    job and its effect: the parts of a saved campaign."""
    r = ScheduleResult(draw_schedule(3, 0, 10), t_start=0.0, t_healed=10.0, t_converged=t_converged,
                       t_end=t_converged + 5.0)
    r.verify = {"out_of_sync_blocks": 0, "finished": True, "done_bytes": 8192, "total_bytes": 8192}
    acks = [{"id": f"w-{i}", "sent": i * 0.1, "acked": i * 0.1 + 0.01} for i in range(50)]
    jobs = [{"jobid": "j1", "command": "startVirtualMachine", "status": 1, "vm": "v1"}]
    effects = [{"request_id": "j1", "op": "start", "vm": "v1"}]
    return r, acks, jobs, effects


def test_a_saved_history_shorter_than_the_campaigns_own_counts_is_a_violation(tmp_path):
    """Review 29: every check passes on an empty or truncated history, so a recheck
    holds the saved files to the counts the campaign judged them by: acknowledged
    writes, jobs, effects, database jobs, each schedule's start and end in the event
    log, and no unreadable line but a last one cut by a crash."""
    import json

    from tandem.lab import torture_report as rep
    r, acks, jobs, effects = _one_schedule_with_a_job()
    db = [{"jobid": "j1", "status": 1, "command": "startVirtualMachine", "vm": "v1"}]
    res = analyse(_marks(r), acks, [], {a["id"] for a in acks}, jobs, effects, [r], Options(seed=3), None, db)
    assert res["violations"] == []
    rep.write_json(res, tmp_path / "results.json")
    history = {"stored": [a["id"] for a in acks], "jobs": jobs, "effects": effects, "db_jobs": db}

    def save(events=_marks(r), lines=None, **changed):
        rep.write_json({**history, **changed}, tmp_path / "history.json")
        (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        lines = [json.dumps(a) for a in acks] if lines is None else lines
        (tmp_path / "writer.jsonl").write_text("".join(line + "\n" for line in lines))
        return [v["what"] for v in rep.recheck(tmp_path)["violations"]]

    assert save() == []
    assert save(lines=[json.dumps(a) for a in acks] + ['{"id": "w-50", "se']) == []  # cut by a crash
    [v] = save(lines=[json.dumps(a) for a in acks[:-1]])
    assert "49 acknowledged writes; the campaign counted 50" in v
    bad_middle = [json.dumps(a) for a in acks[:10]] + ["garbage"] + [json.dumps(a) for a in acks[10:]]
    [v] = save(lines=bad_middle)
    assert "1 unreadable line(s) before the last" in v
    # (a missing job or effect also fails the job checks; the count says why)
    assert "the saved history has 0 accepted jobs; the campaign counted 1" in save(jobs=[])
    assert "the saved history has 0 effects; the campaign counted 1" in save(effects=[])
    assert "the saved history has 0 database jobs; the campaign counted 1" in save(db_jobs=[])
    assert save(events=_marks(r)[:1]) == [f"schedule {r.schedule.name}: no end record in the event log"]


def test_a_lab_event_that_could_not_be_recorded_is_a_violation(tmp_path):
    """Review 29: a process that could not write a lab event (a full disk, no file
    descriptor) went on in silence, and the checker judged a history with a hole: a
    lost `writable True` hides a second writer. The process says so in its log, the
    campaign reads every host's logs for it, and the history fails, also rechecked."""
    import json
    import os
    import subprocess
    import sys

    from tandem.lab import torture_report as rep
    from tandem.lab.events import lost_lab_events
    logs = tmp_path / "hosts" / "node1" / "log"
    logs.mkdir(parents=True)
    with open(logs / "volume-db.log", "wb") as out:  # a real process, its stderr the log
        subprocess.run([sys.executable, "-c", "from tandem.lab.events import record_lab_event as e; "
                        "e('writable', node='node1', writable=True, reason='promoted')"],
                       stdout=out, stderr=subprocess.STDOUT, check=True, timeout=60,
                       env={**os.environ, "TANDEM_LAB_EVENTS": str(tmp_path / "gone" / "events.jsonl")})
    (logs / "agent.log").write_text("nothing of the kind\n")
    [line] = lost_lab_events([logs, tmp_path / "hosts" / "node2" / "log"])
    assert line.startswith("volume-db.log: ") and "writable" in line and "promoted" in line, line
    r, acks, jobs, effects = _one_schedule_with_a_job()
    db = [{"jobid": "j1", "status": 1, "command": "startVirtualMachine", "vm": "v1"}]
    args = (_marks(r), acks, [], {a["id"] for a in acks}, jobs, effects, [r], Options(seed=3), None, db)
    assert analyse(*args)["violations"] == []
    res = analyse(*args, not_recorded=[line])
    [v] = res["violations"]
    assert v["check"] == "history" and "not recorded" in v["what"], v
    rep.write_json(res, tmp_path / "results.json")
    rep.write_json({"stored": [a["id"] for a in acks], "jobs": jobs, "effects": effects, "db_jobs": db,
                    "not_recorded": [line]}, tmp_path / "history.json")
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in _marks(r)))
    (tmp_path / "writer.jsonl").write_text("".join(json.dumps(a) + "\n" for a in acks))
    assert [v["check"] for v in rep.recheck(tmp_path)["violations"]] == ["history"]


def test_a_recheck_judges_convergence_by_the_campaigns_own_bound(tmp_path):
    """Review, session 22: `torture-recheck` judged every campaign by the default
    120 s bound, so one run with --converge-bound 300 got violations it never had.
    Old results.json (no bound saved) keep the default; old saved database jobs (no
    command or VM) are still read, and new ones get the unknown-job rule."""
    import json

    from tandem.lab import torture_report as rep
    r, acks, jobs, effects = _one_schedule_with_a_job(t_converged=210.0)
    old_db = [{"jobid": "j1", "status": 1}, {"jobid": "u0", "status": 1}]
    res = analyse([], acks, [], {a["id"] for a in acks}, jobs, effects, [r],
                  Options(seed=3, converge_bound=300), None, old_db)
    assert res["violations"] == [] and res["converge_bound"] == 300
    rep.write_json(res, tmp_path / "results.json")
    history = {"stored": [a["id"] for a in acks], "jobs": jobs, "effects": effects, "db_jobs": old_db}
    rep.write_json(history, tmp_path / "history.json")
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in _marks(r)))
    (tmp_path / "writer.jsonl").write_text("".join(json.dumps(a) + "\n" for a in acks))
    assert rep.recheck(tmp_path)["violations"] == []
    [v] = rep.recheck(tmp_path, converge_bound=120.0)["violations"]
    assert "200.0 s after healing (bound 120 s)" in v["what"]
    del res["converge_bound"]  # a results.json from before the bound was saved
    rep.write_json(res, tmp_path / "results.json")
    [v] = rep.recheck(tmp_path)["violations"]
    assert v["check"] == "convergence" and "(bound 120 s)" in v["what"]
    new_db = [{**old_db[0], "command": "startVirtualMachine", "vm": "v1"},
              {**old_db[1], "command": "deployVirtualMachine", "vm": "v9"}]
    rep.write_json({**history, "db_jobs": new_db}, tmp_path / "history.json")
    assert [v["check"] for v in rep.recheck(tmp_path)["violations"]] == ["convergence", "jobs"]


def test_schedules_whose_every_fault_was_skipped_are_counted_and_shown():
    """Review, session 22: a schedule whose faults all found their target gone (skipped)
    passed as a clean schedule, unseen. It still is no violation, but the summary
    (the campaign's and torture-summary's, also of results.json saved before) says
    how many there were."""
    from tandem.lab import torture_report as rep
    acks = [{"id": f"w-{i}", "sent": i * 0.1, "acked": i * 0.1 + 0.01} for i in range(300)]
    results = []
    for k in range(3):
        r = ScheduleResult(draw_schedule(4, k, 10), t_start=k * 10.0, t_healed=k * 10.0 + 8,
                           t_converged=k * 10.0 + 9, t_end=k * 10.0 + 10)
        r.verify = {"out_of_sync_blocks": 0, "finished": True, "done_bytes": 8192, "total_bytes": 8192}
        if k != 1:  # schedule 1: every fault skipped
            r.faults = [{"index": 0, "kind": "crash", "describe": "crash node1", "start": k * 10.0 + 1,
                         "end": k * 10.0 + 5}]
        results.append(r)
    res = analyse([], acks, [], {a["id"] for a in acks}, [], [], results, Options(seed=4), None, [])
    assert res["violations"] == [] and res["schedules_without_faults"] == 1
    [line] = [x for x in rep.summary_lines(res) if "no fault applied" in x]
    assert "1 of 3" in line
    clean = {**res, "schedules_without_faults": 0}
    assert not [x for x in rep.summary_lines(clean) if "no fault applied" in x]
    old = {k: v for k, v in res.items() if k != "schedules_without_faults"}  # saved before the count
    combined = rep.combine([res, old])
    assert combined["schedules_without_faults"] == 2 and combined["violations"] == []
    assert [c["schedules_without_faults"] for c in combined["campaigns"]] == [1, 1]
    assert any("2 of 6" in x for x in rep.summary_lines(combined))
