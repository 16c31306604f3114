"""The failure penalty that keeps a failing node out of the leader race: the
first failure costs `failure_timeout` as before, failures in a row double it up
to the maximum (no endless ping-pong when a fault follows the data from node to
node), a quiet spell forgives; the count reaches `tandem status` (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from tandem.cluster.penalty import REASON_CHARS, FailurePenalty
from tandem.cluster.status import render, status_dict
from tandem.dcs.view import Member
from tests.cluster_decide.build import member, view


def test_failures_in_a_row_double_the_time_out_up_to_the_maximum():
    p = FailurePenalty(first=10, longest=300, reset=600)
    now, outs = 1000.0, []
    for _ in range(8):
        outs.append(p.record(now, "mariadb failed to start"))
        assert not p.served(now + outs[-1] - 0.01) and p.served(now + outs[-1])
        now += outs[-1] + 1  # fails again as soon as it is back (the ping-pong of torture 11:77)
    assert outs == [10, 20, 40, 80, 160, 300, 300, 300]
    assert p.recent(now) == 8


def test_failures_while_out_of_the_race_start_the_same_penalty_again():
    """A leader with no peer to take over retries its start every second or two:
    those failures do not double the penalty (torture 15:41 reached 300 s in 5 s)."""
    p = FailurePenalty(first=10, longest=300, reset=600)
    assert [p.record(t, "x") for t in (0.0, 1.0, 2.5, 4.0, 6.0)] == [10, 10, 10, 10, 10]
    assert p.failures == 1 and not p.served(15.9) and p.served(16.0)
    assert p.record(16.5, "x") == 20, "failing again once back in the race doubles it"


def test_a_quiet_spell_forgives_and_a_lone_failure_costs_the_first_timeout_again():
    p = FailurePenalty(first=10, longest=300, reset=600)
    p.record(0.0, "x")
    p.record(20.0, "x")
    assert p.penalty() == 20
    assert p.recent(620.0) == 2 and p.recent(620.01) == 0
    assert p.record(700.0, "y") == 10 and p.failures == 1


def test_cleanup_forgets_every_failure():
    p = FailurePenalty(first=10, longest=300, reset=600)
    for t in (0.0, 11.0, 32.0):  # each once back in the race: 10, 20, 40 s
        p.record(t, "x")
    assert p.penalty() == 40 and p.clear() == 3
    assert p.served(33.0) and p.recent(33.0) == 0 and p.last_reason == ""
    assert p.record(34.0, "y") == 10, "the next failure is a first one again"


def test_no_failure_means_no_penalty():
    p = FailurePenalty()
    assert p.served(0.0) and p.recent(0.0) == 0 and p.penalty() == 0


@given(st.lists(st.floats(min_value=0.0, max_value=2000.0), min_size=1, max_size=30),
       st.floats(min_value=0.5, max_value=60), st.floats(min_value=1, max_value=20))
def test_the_penalty_is_bounded_and_never_shrinks_within_a_run(gaps, first, factor):
    p = FailurePenalty(first=first, longest=first * factor, reset=first * factor * 2)
    now, previous = 0.0, 0.0
    for gap in gaps:
        now += gap
        in_run = p.last_at is not None and now - p.last_at <= p.reset
        out = p.record(now, "r" * 500)
        assert first <= out <= p.longest
        assert out >= previous or not in_run
        previous = out
    assert len(p.last_reason) == REASON_CHARS


def test_status_shows_the_failures_in_a_row_and_what_failed_last():
    failing = Member("node2", healthy=False, failures=3,
                     last_failure="start failed at mariadb (mariadbd exited 1: No space left on device)")
    record = json.loads(json.dumps(failing.to_value()))
    assert Member.from_value("node2", record) == failing
    st_ = status_dict(view("node1", members=(member("node1"), failing)), ["node1", "node2"], None)
    row = st_["nodes"][1]
    assert row["failures"] == 3 and "No space left" in row["last_failure"]
    assert row["not_promotable_because"][0] == "unhealthy after 3 failure(s) in a row"
    console = Console(record=True, width=200)
    render(st_, console)
    assert ("node2 failed 3 time(s) in a row, last: start failed at mariadb (mariadbd exited 1:"
            " No space left on device)") in console.export_text()


def test_status_shows_a_resource_warning_of_a_healthy_node():
    full = Member("node1", healthy=True, warnings=("/data/dbmnt SPACE LOW: 93% used, 15 MiB free; grow the"
                                                   " volume or free space",))
    record = json.loads(json.dumps(full.to_value()))
    assert Member.from_value("node1", record) == full
    st_ = status_dict(view("node1", members=(full, member("node2"))), ["node1", "node2"], None)
    assert st_["nodes"][0]["warnings"] == list(full.warnings) and st_["nodes"][1]["warnings"] == []
    console = Console(record=True, width=200)
    render(st_, console)
    assert "node1 warning: /data/dbmnt SPACE LOW: 93% used" in console.export_text()


@pytest.mark.parametrize("bad", [None, "x", [1, None], {"a": 1}])
def test_broken_warnings_in_a_member_record_read_as_none(bad):
    assert Member.from_value("node1", {"warnings": bad}).warnings == ()


@pytest.mark.parametrize("bad", [-1, "3", True, 2.5, None])
def test_a_broken_failure_count_in_a_member_record_reads_as_zero(bad):
    assert Member.from_value("node1", {"failures": bad}).failures == 0



def test_status_prints_text_from_the_dcs_as_it_is_never_as_markup():
    """Failure reasons carry log tails: haproxy writes `parsing [/etc/x.cfg:12]`. Taken
    for rich markup, `[/...]` ended `tandem status` with a traceback and `[note]` was
    silently dropped (review 35)."""
    reason = "haproxy exited 1: parsing [/etc/haproxy/x.cfg:12] : unknown keyword [note] here"
    failing = Member("node2", healthy=False, failures=1, last_failure=reason,
                     warnings=("odd [bold]text[/bold] [/",))
    st_ = status_dict(view("node1", members=(member("node1"), failing)), ["node1", "node2"], None)
    console = Console(record=True, width=300)
    render(st_, console)
    out = console.export_text()
    assert f"last: {reason}" in out
    assert "node2 warning: odd [bold]text[/bold] [/" in out
