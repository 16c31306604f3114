"""ResourceGroup with exec resources acting on files (no network namespace
involved, so these run in the test process): order, reverse stop that carries
on past a failing member, restart of a failed member and its dependents, the
restart threshold and its window, start rollback, and operation timeouts that
kill the command."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tandem.cluster.resources import ResourceGroup, build, parse_resource
from tandem.cluster.resources.procs import ProcRef


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def member(d: Path, name: str, *, fail_stop: bool = False, fail_start: bool = False, **extra):
    log, flag = d / "log", d / f"{name}.on"
    start = f"echo start {name} >> {log}" + ("; echo cannot start; exit 1" if fail_start
                                             else f"; touch {flag}")
    stop = f"echo stop {name} >> {log}" + ("; echo stuck; exit 1" if fail_stop else f"; rm -f {flag}")
    return build(parse_resource({"kind": "exec", "name": name, "start": start, "stop": stop,
                                 "monitor": f"test -e {flag} || exit 7", **extra}))


def log_of(d: Path) -> list[str]:
    text = (d / "log").read_text() if (d / "log").exists() else ""
    (d / "log").write_text("")
    return text.splitlines()


def test_start_in_order_stop_in_reverse_past_a_failing_stop(tmp_path):
    group = ResourceGroup("g", [member(tmp_path, "a"), member(tmp_path, "b", fail_stop=True),
                                member(tmp_path, "c")])

    async def go():
        return await group.start(), await group.stop()

    started, stopped = asyncio.run(go())
    assert started.ok and started.sentence == "started a, b, c in order"
    assert log_of(tmp_path) == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert not stopped.ok and stopped.stop_failed == ("b",)
    assert stopped.sentence == "stopped 2 of 3 resources; stop FAILED for b: stop command exited 1: stuck"
    assert [h for _, h in group.history][-1] == stopped.sentence
    assert len(group.history) == 8  # 6 member operations + 2 group sentences


def test_restart_threshold_then_failover_and_window(tmp_path):
    clock = Clock()
    group = ResourceGroup("g", [member(tmp_path, "a"), member(tmp_path, "b", max_failures=3,
                                                              failure_window=60), member(tmp_path, "c")],
                          clock=clock)

    async def go():
        assert (await group.start()).ok
        log_of(tmp_path)
        healthy = await group.check()
        assert healthy.ok and healthy.sentence == "all 3 resources healthy"
        results = []
        for _ in range(3):
            (tmp_path / "b.on").unlink()  # b dies
            clock.now += 10
            results.append(await group.check())
        return results

    first, second, third = asyncio.run(go())
    assert first.ok and first.sentence == ("restarted b and 1 dependent after failure 1/3 within 60 s"
                                           " (monitor command says not running)")
    assert second.ok and "failure 2/3" in second.sentence
    assert not third.ok and third.failover_needed
    assert third.sentence == ("b failed 3 times within 60 s (last: monitor command says not running):"
                              " giving up on this node, failover needed")
    # b's restarts took c (after b) along, never a (before b); the third did nothing.
    assert log_of(tmp_path) == ["stop c", "stop b", "start b", "start c"] * 2

    # Given up, the group is still checked every few seconds (a leader with no peer to
    # hand over to): those checks are the same failure, not new ones, so the window
    # empties and the restart comes once the failures are older than it (review 35:
    # every tick counted one more, and the resource was never restarted again).
    log_of(tmp_path)
    given_up = []
    for _ in range(35):
        clock.now += 2
        given_up.append(asyncio.run(group.check()))
    assert all(not r.ok and r.failover_needed for r in given_up[:29]), given_up[:29]
    assert "given up on this node, failover needed; restarted here in 58 s" in given_up[0].sentence
    # Gave up at 30 s; the window (60 s) later, at the 30th check, b is restarted.
    assert given_up[29].ok, given_up[29]
    assert given_up[29].sentence.startswith("restarted b and 1 dependent after failure 1/3")
    assert log_of(tmp_path) == ["stop c", "stop b", "start b", "start c"]
    assert all(r.ok for r in given_up[29:])


def test_a_give_up_ends_when_the_resource_runs_again_or_the_group_starts(tmp_path):
    """Given up on, then found running again (a transient fault, or an operator's
    start) before failure_window passed: the next failure was taken for the old one,
    neither restarted nor counted, and a leader marked healthy meanwhile kept a dead
    database (review 35). It is a new failure: counted, and given up on again at once
    (the earlier ones are still in the window), which asks for a failover."""
    clock = Clock()
    group = ResourceGroup("g", [member(tmp_path, "a", max_failures=3, failure_window=60)],
                          clock=clock)

    async def go():
        assert (await group.start()).ok
        for _ in range(3):
            (tmp_path / "a.on").unlink()
            clock.now += 1
            await group.check()
        assert not (tmp_path / "a.on").exists()  # given up at the third: not restarted
        (tmp_path / "a.on").touch()  # running again
        clock.now += 1
        assert (await group.check()).ok
        (tmp_path / "a.on").unlink()
        clock.now += 1
        again = await group.check()
        assert not again.ok and again.failover_needed and again.new_failure, again
        assert "giving up on this node" in again.sentence
        # A fresh start (a promotion, here or after a failover back): no give-up left.
        await group.stop()
        assert (await group.start()).ok
        (tmp_path / "a.on").unlink()
        clock.now += 61  # the old failures have left the window
        return await group.check()

    after_start = asyncio.run(go())
    assert after_start.ok and "restarted a after failure 1/3" in after_start.sentence


def test_a_single_failure_threshold_still_retries_after_the_window(tmp_path):
    """max_failures = 1: give up at the first failure. After failure_window the group
    restarts it once (it gave up again at once before, for ever)."""
    clock = Clock()
    group = ResourceGroup("g", [member(tmp_path, "a", max_failures=1, failure_window=30)],
                          clock=clock)

    async def go():
        assert (await group.start()).ok
        (tmp_path / "a.on").unlink()
        clock.now += 1
        first = await group.check()
        clock.now += 31
        return first, await group.check()

    first, retried = asyncio.run(go())
    assert not first.ok and first.failover_needed
    assert retried.ok and "restarted a" in retried.sentence and (tmp_path / "a.on").exists()


def test_failed_start_rolls_back_in_reverse(tmp_path):
    group = ResourceGroup("g", [member(tmp_path, "a"), member(tmp_path, "b"),
                                member(tmp_path, "c", fail_start=True), member(tmp_path, "d")])
    res = asyncio.run(group.start())
    assert not res.ok and res.failover_needed and not group.started
    assert res.sentence == ("start failed at c (start command exited 1: cannot start); stopped c, b, a"
                            " again; failover needed")
    assert log_of(tmp_path) == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def test_timeouts_bound_every_operation_and_kill_the_command(tmp_path):
    pidfile = tmp_path / "pid"
    res = build(parse_resource({
        "kind": "exec", "name": "slow", "start": f"echo $$ > {pidfile}; exec sleep 30",
        "stop": "sleep 30", "monitor": "sleep 30",
        "start_timeout": 0.5, "stop_timeout": 0.3, "monitor_timeout": 0.3}))

    async def go():
        return await res.start(), await res.monitor(), await res.stop()

    t0 = time.monotonic()
    start, health, stop = asyncio.run(go())
    assert time.monotonic() - t0 < 3
    assert not start.ok and start.sentence == "start timed out after 0.5 s"
    assert health.state == "failed" and health.reason == "monitor timed out after 0.3 s"
    assert not stop.ok and stop.sentence == "stop timed out after 0.3 s"
    pid = int(pidfile.read_text())
    ref = ProcRef.of(pid)
    assert ref is None or not ref.alive(), f"sleep {pid} survived the timeout"


def test_check_on_a_stopped_group_touches_nothing(tmp_path):
    group = ResourceGroup("g", [member(tmp_path, "a")])
    res = asyncio.run(group.check())
    assert res.ok and res.sentence == "group is stopped"
    assert not (tmp_path / "log").exists()


def test_duplicate_member_names_rejected(tmp_path):
    with pytest.raises(ValueError, match="duplicate member names"):
        ResourceGroup("g", [member(tmp_path, "a"), member(tmp_path, "a")])


def _my_zombies() -> set[str]:
    zombies = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        ref = ProcRef.of(int(pid))
        stat = Path(f"/proc/{pid}/stat").read_text() if ref else ""
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.add(pid)
    return zombies


def test_no_zombie_left_behind(tmp_path):
    """The group's exec commands are all reaped (zombies left by earlier tests in
    this process, e.g. lab daemons killed by a crash, are not this test's)."""
    before = _my_zombies()
    asyncio.run(ResourceGroup("g", [member(tmp_path, "a")]).start())
    assert _my_zombies() - before == set()
