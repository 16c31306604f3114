"""Safety properties of decide() over generated views and local states.

The generators cover every field decide() reads, including inputs a correct
agent would never produce (a primary without a lease, two primaries at once,
stale switchover requests): the properties must hold for all of them.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.cluster.decide import decide, peer_is_eligible, why_not_eligible
from tandem.cluster.view import Action, LocalState
from tandem.dcs.view import ClusterView, Leader, Member, NodeRole, Switchover, VolumeState
from tandem.volume.states import DiskState

NODES = ("node1", "node2")
NOW = 1000.0
# Biased towards the healthy case, so that the leadership actions (which need
# everything right) are drawn often, while every failure still appears.
disk = st.sampled_from([DiskState.UP_TO_DATE] * 4 + list(DiskState))
usually = st.sampled_from([True] * 4 + [False])
rarely = st.sampled_from([False] * 4 + [True])
maybe_node = st.one_of(st.none(), st.sampled_from((*NODES, "node3")))


@st.composite
def views(draw) -> ClusterView:
    members = tuple(
        Member(n, draw(st.sampled_from(list(NodeRole))), draw(st.one_of(st.none(), disk)),
               draw(usually), draw(rarely))
        for n in NODES if draw(usually))
    volumes = tuple(
        VolumeState(r, tuple((n, draw(disk)) for n in NODES if draw(usually)), "g", 5)
        for r in ("r0", "r1") if draw(st.booleans()))
    holder = draw(maybe_node)
    epoch = draw(st.integers(0, 5))
    leader = Leader(holder, epoch, draw(st.integers(1, 2)), 7) if holder else None
    sw = draw(st.one_of(st.none(), st.none(), st.builds(Switchover, maybe_node, maybe_node)))
    return ClusterView("c", 50, leader, members, volumes, sw, draw(rarely),
                       frozenset(n for n in NODES if draw(rarely)), (), epoch, 3)


@st.composite
def locals_(draw, node: str) -> LocalState:
    deadline = draw(st.one_of(st.none(), st.floats(NOW + 0.5, NOW + 2), st.floats(NOW - 2, NOW + 2)))
    return LocalState(node=node, disk_state=draw(st.one_of(st.none(), disk)), healthy=draw(usually),
                      is_primary=draw(st.booleans()), dcs_ok=draw(usually), lease_deadline=deadline,
                      nofailover=draw(rarely), fencing=draw(st.booleans()),
                      leader_unreachable=draw(st.booleans()),
                      fenced_token=draw(st.sampled_from((None, 1, 2))),
                      margin=draw(st.sampled_from((0.0, 0.3))))


def holds(view: ClusterView, node: str) -> bool:
    return view.is_leader(node)


@settings(max_examples=800, deadline=None)
@given(views(), locals_("node1"), locals_("node2"))
def test_never_two_nodes_lead_from_one_view(view, a, b):
    """PROMOTE/LEAD with a fresh view only by the key holder, so never by both;
    ACQUIRE only on a free key, FENCED_TAKEOVER only for a fenced key."""
    da, db = decide(view, a, NOW), decide(view, b, NOW)
    leading = [loc.node for loc, d in ((a, da), (b, db)) if d.action.is_leading and loc.dcs_ok]
    assert len(leading) <= 1
    for loc, d in ((a, da), (b, db)):
        if d.action.is_leading and loc.dcs_ok:
            assert holds(view, loc.node), d.reason
        if d.action is Action.ACQUIRE:
            assert view.leader is None and loc.dcs_ok
        if d.action is Action.FENCED_TAKEOVER:
            assert view.leader is not None and loc.fenced_token == view.leader.revision
            assert view.leader.node != loc.node


@settings(max_examples=800, deadline=None)
@given(views(), locals_("node1"))
def test_a_node_that_is_not_up_to_date_never_seeks_or_keeps_leadership(view, loc):
    not_up = loc.disk_state is not DiskState.UP_TO_DATE or any(
        not v.is_up_to_date(loc.node) for v in view.volumes)
    d = decide(view, loc, NOW)
    if not_up:
        assert not d.action.seeks_leadership, d.reason
        assert not (d.action.is_leading and loc.dcs_ok), d.reason


@settings(max_examples=800, deadline=None)
@given(views(), locals_("node1"))
def test_ineligible_nodes_never_seek_leadership(view, loc):
    d = decide(view, loc, NOW)
    if d.action.seeks_leadership:
        assert not why_not_eligible(view, loc)
        assert not view.maintenance and not view.is_standby(loc.node) and not loc.nofailover


@settings(max_examples=800, deadline=None)
@given(views(), locals_("node1"), st.floats(0, 3))
def test_a_holder_past_its_deadline_always_demotes(view, loc, late):
    if loc.lease_deadline is None:
        return
    now = loc.lease_deadline - loc.margin + late
    d = decide(view, loc, now)
    if (loc.is_primary or holds(view, loc.node)) and not view.maintenance:
        assert d.action is Action.DEMOTE, d.reason
    # Whatever else happens, nothing writable is kept past the deadline.
    if not view.maintenance:
        assert not d.action.is_leading


@settings(max_examples=600, deadline=None)
@given(views(), locals_("node1"))
def test_maintenance_means_nothing_and_primary_under_other_leader_demotes(view, loc):
    d = decide(view, loc, NOW)
    if view.maintenance:
        assert d.action is Action.NOTHING
    elif (loc.dcs_ok and loc.is_primary and view.leader is not None and view.leader.node != loc.node
          and not loc.deadline_passed(NOW)):
        assert d.action is Action.DEMOTE


@settings(max_examples=600, deadline=None)
@given(views(), locals_("node1"), locals_("node2"))
def test_only_the_named_candidate_races_when_it_is_eligible(view, a, b):
    sw = view.switchover
    named = sw is not None and sw.candidate in NODES and peer_is_eligible(view, sw.candidate)
    if view.leader is None and named:
        for loc in (a, b):
            if loc.node != sw.candidate:
                assert decide(view, loc, NOW).action is not Action.ACQUIRE


@settings(max_examples=300, deadline=None)
@given(views(), locals_("node1"))
def test_every_decision_is_one_sentence(view, loc):
    d = decide(view, loc, NOW)
    assert d.reason and "\n" not in d.reason and len(d.reason) < 300
