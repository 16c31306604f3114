"""The host-request fence of the job lease, as pure rules (Lease.may_send)."""

from __future__ import annotations

from tandem.mgmt.jobcore import Lease


def test_requests_expire_before_anyone_may_presume_us_dead():
    lease = Lease(dead_after=4.0, interval=1.0)
    assert lease.requests_valid_until() is None and not lease.may_send(0.0, 0.0)
    lease.beat_done(10.0, 10.2)
    assert lease.requests_valid_until() == 13.0  # from when the beat was sent, 3/4 of dead_after
    assert lease.may_send(12.9, 10.5) and not lease.may_send(13.0, 10.5)


def test_a_gap_in_the_lease_demands_new_proof_of_ownership():
    lease = Lease(dead_after=4.0, interval=1.0)
    lease.beat_done(10.0, 10.1)
    lease.beat_done(11.0, 11.1)  # no gap: a write proven at 10.5 still counts
    assert lease.may_send(11.5, 10.5)
    lease.beat_done(20.0, 20.1)  # paused (or the DB was away) from ~14 to 20
    assert not lease.may_send(20.2, 10.5), "a proof from before the gap must not count"
    assert lease.may_send(20.3, 20.2)
    lease.beat_done(21.0, 25.5)  # a slow beat is valid from when it was sent: already over
    assert not lease.may_send(25.6, 25.55)
    lease.beat_done(26.0, 26.1)
    assert not lease.may_send(26.2, 25.55) and lease.may_send(26.2, 26.15)


def test_no_takeover_while_our_own_beat_is_stuck():
    """Takeover runs apart from the heartbeat (a dead server's locks must not stall the
    beat). While our beat hangs, the database may be failing over: once it is back,
    every other server's heartbeat looks stale, so no takeover may start meanwhile."""
    lease = Lease(dead_after=2.0, interval=0.5)
    t = 0.0
    for _ in range(6):  # steady beats for longer than dead_after
        lease.beat_begun(t)
        lease.beat_done(t, t + 0.01)
        t += 0.5
    assert lease.may_take_over(t)
    lease.beat_begun(t)
    assert lease.may_take_over(t + 0.4)  # a beat under way, not late yet
    assert not lease.may_take_over(t + 0.6)  # stuck longer than the interval
    lease.beat_done(t, t + 0.7)  # slow: the steady clock restarts
    assert not lease.may_take_over(t + 0.8)
