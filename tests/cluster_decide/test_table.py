"""decide() as a decision table: one row per situation the agent must handle,
with the action, its target and a word the sentence must contain."""

from __future__ import annotations

import pytest

from tandem.cluster.decide import decide
from tandem.cluster.view import Action
from tandem.dcs.view import Switchover
from tests.cluster_decide.build import FAILED, INC, NOW, OUT, TOKEN, UP, local, member, view

A = Action
ROWS = [
    # --- guards --------------------------------------------------------------------
    ("maintenance freezes a leader", view("node1", maintenance=True), local(primary=True),
     A.NOTHING, None, "maintenance"),
    ("maintenance freezes a leader even past its deadline", view("node1", maintenance=True),
     local(primary=True, deadline=NOW - 5), A.NOTHING, None, "maintenance"),
    ("maintenance freezes a replica with no leader", view(None, maintenance=True), local(),
     A.NOTHING, None, "maintenance"),
    ("leader past its deadline demotes", view("node1"), local(primary=True, deadline=NOW + 0.2),
     A.DEMOTE, None, "margin"),
    ("leader exactly at deadline-margin demotes", view("node1"), local(primary=True, deadline=NOW + 0.3),
     A.DEMOTE, None, "deadline"),
    ("primary without any lease demotes", view("node1"), local(primary=True, deadline=None),
     A.DEMOTE, None, "without a lease"),
    ("key holder not yet primary past deadline demotes", view("node1"), local(deadline=NOW - 1),
     A.DEMOTE, None, "deadline"),
    ("DCS unreachable: primary keeps resources until the deadline", view("node1"),
     local(primary=True, dcs_ok=False), A.LEAD, None, "at most 0.40 s"),
    ("DCS unreachable: replica stays secondary", view(None), local("node2", dcs_ok=False),
     A.FOLLOW, None, "unreachable"),
    ("DCS unreachable past deadline: primary demotes", view("node1"),
     local(primary=True, dcs_ok=False, deadline=NOW), A.DEMOTE, None, "deadline"),
    # --- no leader -----------------------------------------------------------------
    ("no leader, eligible replica races", view(None), local("node2"), A.ACQUIRE, None, "epoch 4"),
    ("no leader, primary re-acquires", view(None), local(primary=True), A.ACQUIRE, None, "keeping"),
    ("no leader, Outdated per DCS stays secondary", view(None, disks={"node1": UP, "node2": OUT}),
     local("node2"), A.FOLLOW, None, "r0 is Outdated"),
    ("no leader, unrecorded disk stays secondary", view(None, disks={"node1": UP}),
     local("node2"), A.FOLLOW, None, "unrecorded"),
    ("no leader, local disk Inconsistent stays secondary", view(None), local("node2", INC),
     A.FOLLOW, None, "Inconsistent"),
    ("no leader, unhealthy stays secondary", view(None), local("node2", healthy=False),
     A.FOLLOW, None, "not healthy"),
    ("no leader, nofailover (local) stays secondary", view(None), local("node2", nofailover=True),
     A.FOLLOW, None, "nofailover"),
    ("no leader, nofailover (member key) stays secondary",
     view(None, members=(member("node1"), member("node2", nofailover=True))), local("node2"),
     A.FOLLOW, None, "nofailover"),
    ("no leader, standby stays secondary", view(None, standby=frozenset({"node2"})), local("node2"),
     A.FOLLOW, None, "standby"),
    ("no leader, primary that may not lead demotes", view(None, disks={"node1": OUT, "node2": UP}),
     local(primary=True), A.DEMOTE, None, "Outdated"),
    ("fresh cluster without volume records: eligible", view(None, fresh=True), local("node2"),
     A.ACQUIRE, None, "racing"),
    ("failover --to node2: node2 races", view(None, switchover=Switchover(None, "node2")), local("node2"),
     A.ACQUIRE, None, "racing"),
    ("failover --to node2: node1 waits", view(None, switchover=Switchover(None, "node2")), local("node1"),
     A.FOLLOW, "node2", "asked for node2"),
    ("failover --to a dead node: normal race",
     view(None, members=(member("node1"),), switchover=Switchover(None, "node2")), local("node1"),
     A.ACQUIRE, None, "racing"),
    # --- leader is me ----------------------------------------------------------------
    ("leader renews", view("node1"), local(primary=True), A.LEAD, None, "renewing"),
    ("new leader promotes", view("node1"), local(), A.PROMOTE, None, "starting"),
    ("switchover: leader steps down for target", view("node1", switchover=Switchover("node1", "node2")),
     local(primary=True), A.STEP_DOWN, "node2", "switchover to node2"),
    ("switchover without candidate: any eligible peer", view("node1", switchover=Switchover("node1")),
     local(primary=True), A.STEP_DOWN, "node2", "switchover"),
    ("switchover to an Outdated peer is ignored",
     view("node1", disks={"node1": UP, "node2": OUT}, switchover=Switchover("node1", "node2")),
     local(primary=True), A.LEAD, None, "ignoring"),
    ("switchover addressed to a former leader is cleared",
     view("node1", switchover=Switchover("node2", "node1")), local(primary=True), A.LEAD, None, "renewing"),
    ("standby leader hands over", view("node1", standby=frozenset({"node1"})), local(primary=True),
     A.STEP_DOWN, "node2", "standby"),
    ("standby leader with no eligible peer still stops",
     view("node1", standby=frozenset({"node1"}), members=(member("node1"),)), local(primary=True),
     A.STEP_DOWN, None, "service stops"),
    ("unhealthy leader hands over to a healthy peer", view("node1"), local(primary=True, healthy=False),
     A.STEP_DOWN, "node2", "unhealthy"),
    ("unhealthy leader with no eligible peer keeps going",
     view("node1", members=(member("node1"), member("node2", healthy=False))),
     local(primary=True, healthy=False), A.LEAD, None, "no peer"),
    ("leader whose disk failed demotes at once, no graceful stop to hang on",
     view("node1"), local(disk=FAILED, primary=True), A.DEMOTE, "node2", "Failed"),
    ("leader whose DCS record is not UpToDate steps down gracefully",
     view("node1", disks={"node1": OUT, "node2": UP}), local(primary=True), A.STEP_DOWN, "node2",
     "DCS records"),
    # --- leader is other -------------------------------------------------------------
    ("replica follows", view("node1"), local("node2"), A.FOLLOW, None, "following node1"),
    ("old primary sees another leader and demotes", view("node2"), local("node1", primary=True),
     A.DEMOTE, None, "node2 holds"),
    ("replica asks for a fence when the leader looks dead", view("node1"),
     local("node2", fencing=True, leader_unreachable=True), A.FENCE_LEADER, "node1", "fencing node1"),
    ("no fencing agent: wait for the lease", view("node1"), local("node2", leader_unreachable=True),
     A.FOLLOW, None, "following"),
    ("Outdated replica never asks for a fence", view("node1", disks={"node1": UP, "node2": OUT}),
     local("node2", fencing=True, leader_unreachable=True), A.FOLLOW, None, "following"),
    ("fence confirmed for this key: take over", view("node1"),
     local("node2", fencing=True, fenced_token=TOKEN["node1"]), A.FENCED_TAKEOVER, "node1", "fencing agent"),
    ("fence confirmed for an older key: no takeover", view("node1"),
     local("node2", fencing=True, fenced_token=TOKEN["node1"] - 1), A.FOLLOW, None, "following"),
    ("fenced but Outdated: no takeover", view("node1", disks={"node1": UP, "node2": OUT}),
     local("node2", fenced_token=TOKEN["node1"]), A.FOLLOW, None, "Outdated"),
    ("a leader that still renews is never fenced", view("node1"),
     local("node2", fencing=True, leader_unreachable=False), A.FOLLOW, None, "following"),
    ("fenced but in standby: no takeover", view("node1", standby=frozenset({"node2"})),
     local("node2", fencing=True, fenced_token=TOKEN["node1"]), A.FOLLOW, None, "standby"),
    ("fenced but the DCS is unreachable: no takeover", view("node1"),
     local("node2", fencing=True, fenced_token=TOKEN["node1"], dcs_ok=False), A.FOLLOW, None, "unreachable"),
    ("the key expired while fencing: the ordinary race", view(None),
     local("node2", fencing=True, leader_unreachable=True, fenced_token=TOKEN["node1"]), A.ACQUIRE, None,
     "racing"),
]


@pytest.mark.parametrize(("name", "v", "loc", "action", "target", "word"), ROWS, ids=[r[0] for r in ROWS])
def test_decision_table(name, v, loc, action, target, word):
    d = decide(v, loc, NOW)
    assert d.action is action, d.reason
    assert d.target == target, d.reason
    assert word in d.reason
    assert "\n" not in d.reason and d.reason[0].islower()


def test_leader_clears_a_done_or_moot_switchover():
    done = decide(view("node1", switchover=Switchover("node2", "node1")), local(primary=True), NOW)
    assert done.clear_switchover
    moot = decide(view("node1", disks={"node1": UP, "node2": OUT}, switchover=Switchover("node1", "node2")),
                  local(primary=True), NOW)
    assert moot.clear_switchover
    assert not decide(view("node1"), local(primary=True), NOW).clear_switchover


def test_switchover_round_trip_is_ordered():
    """Leader steps down (target named), releases; then only the target races."""
    sw = Switchover("node1", "node2")
    step = decide(view("node1", switchover=sw), local(primary=True), NOW)
    assert (step.action, step.target) == (A.STEP_DOWN, "node2")
    after = view(None, switchover=sw)
    assert decide(after, local("node1"), NOW).action is A.FOLLOW
    assert decide(after, local("node2"), NOW).action is A.ACQUIRE
    done = decide(view("node2", epoch=4, switchover=sw), local("node2"), NOW)
    assert done.action is A.PROMOTE and done.clear_switchover
