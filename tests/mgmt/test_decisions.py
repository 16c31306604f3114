"""The pure decision tables: VM state plans and the heartbeat lease."""

from __future__ import annotations

from tandem.mgmt.jobs import Lease
from tandem.mgmt.vmstates import TABLE, VmState, plan


def test_every_transitional_state_a_plan_writes_is_resumed_by_the_same_command():
    # A job re-run after a takeover finds the state it wrote itself: it must carry on.
    for (command, _), p in TABLE.items():
        if p.during is not None:
            again = plan(command, p.during)
            assert again.host_op == p.host_op and again.after == p.after, (command, p)


def test_plans_read_like_cloudstack():
    assert plan("start", "Running").noop and plan("stop", "Stopped").noop
    assert plan("reboot", "Stopped").refuse and plan("start", "Destroyed").refuse
    assert plan("stop", "Running").after == VmState.STOPPED
    assert plan("destroy", "Running").after == VmState.DESTROYED
    assert plan("destroy", "Destroyed").noop
    expunge = plan("expunge", "Destroyed")
    assert expunge.host_op is None and expunge.removed  # the host forgot it at destroy
    assert plan("expunge", "Running").host_op == "destroy"
    assert plan("deploy", "Running").refuse


def test_lease_waits_a_full_period_of_steady_beats_before_taking_over():
    lease = Lease(dead_after=3.0, interval=0.75)
    assert lease.fenced(0.0) and not lease.may_take_over(0.0)
    lease.beat_done(0.0, 0.01)
    assert not lease.fenced(1.0) and not lease.may_take_over(1.0)
    for t in (0.75, 1.5, 2.25, 3.0):
        lease.beat_done(t, t + 0.01)
    assert lease.may_take_over(3.02)
    # a beat that waited for the database restarts the clock: everyone's heartbeat is stale now
    lease.beat_done(3.75, 9.0)
    assert not lease.may_take_over(9.1) and not lease.fenced(9.1)
    assert lease.may_take_over(12.0)
    lease.beat_failed()
    assert not lease.may_take_over(12.5)
    assert lease.fenced(11.3)  # no beat for more than 0.75 * dead_after
