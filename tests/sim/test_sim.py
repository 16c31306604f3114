"""The deterministic simulation of the HA layer (tandem.sim): a CI batch with no
violations, exact replay, and proof that the checker fails on broken agents."""

from __future__ import annotations

import pytest

from tandem.sim.run import batch, main
from tandem.sim.schedule import generate, run, shrink
from tandem.sim.world import Fault

CI_SCHEDULES = 300

#: Schedules that regression tests replay, as generate() made them before it knew
#: the volume daemon's pause (vpause): a new fault kind changes every seed's draw.
SCHEDULES = {
    32: [Fault('link_cut', None, 6.11, 1.123), Fault('partition', 'node2', 6.225, 4.003),
         Fault('partition', 'node1', 9.1, 3.267), Fault('link_cut', None, 15.214, 2.732)],
    14518: [Fault('partition_up', 'node2', 10.388, 1.041), Fault('link_cut', None, 10.685, 5.844),
            Fault('crash', 'node2', 13.165, 2.681), Fault('pause', 'node2', 17.859, 2.845)],
    68805: [Fault('skew', 'node1', 0.0, 0.0, -0.0046), Fault('skew', 'node2', 0.0, 0.0, -0.0109),
            Fault('crash', 'node1', 2.882, 0.584), Fault('disk_fail', 'node1', 9.632, 3.081),
            Fault('link_cut', None, 10.545, 2.158), Fault('link_cut', None, 12.66, 5.005)],
    87905: [Fault('skew', 'node2', 0.0, 0.0, -0.00548), Fault('link_cut', None, 7.856, 1.514),
            Fault('partition_down', 'node2', 11.828, 0.621), Fault('partition_up', 'node1', 13.156, 4.771),
            Fault('link_cut', None, 14.63, 5.901), Fault('partition', 'node1', 17.105, 1.96)],
    102590: [Fault('skew', 'node2', 0.0, 0.0, 0.00727), Fault('partition', 'node2', 4.389, 3.784),
             Fault('link_cut', None, 12.971, 2.929), Fault('partition_up', 'node1', 13.653, 3.618)],
    107336: [Fault('pause', 'node1', 6.305, 1.035), Fault('switchover', None, 6.877, 0.0),
             Fault('disk_fail', 'node1', 7.962, 2.42), Fault('partition_up', 'node2', 10.866, 3.719),
             Fault('partition_up', 'node1', 12.603, 0.262), Fault('pause', 'node1', 17.946, 2.586)],
    118244: [Fault('pause', 'node2', 4.351, 0.705), Fault('link_cut', None, 9.169, 3.721),
             Fault('switchover', None, 14.792, 0.0), Fault('link_cut', None, 16.453, 0.856)],
    1789: [Fault('partition', 'node2', 3.906, 0.334), Fault('partition_down', 'node1', 5.729, 0.929),
           Fault('link_cut', None, 6.035, 4.107), Fault('partition_up', 'node2', 6.658, 4.777),
           Fault('crash', 'node1', 9.64, 1.103)],
}


def test_ci_batch_has_no_violations():
    s = batch(CI_SCHEDULES, seed=1)
    assert s["schedules"] == CI_SCHEDULES
    assert not s["failing_seeds"], [str(v) for r in s["failures"] for v in r.violations][:5]
    assert set(s["faults"]) >= {"crash", "partition", "partition_up", "partition_down", "link_cut",
                                "pause", "vpause", "loss", "skew", "switchover", "disk_fail"}
    assert s["promotions"] > CI_SCHEDULES  # failovers really happen
    assert s["acked_writes"] > 100 * CI_SCHEDULES
    # its speed is `tandem sim`'s own report, never a test's assertion (a loaded machine)


def test_same_seed_same_trace():
    a, b = run(4242), run(4242)
    assert a.trace == b.trace and a.acked == b.acked and a.events == b.events
    assert run(4243).trace != a.trace
    assert generate(4242) == generate(4242)


@pytest.mark.parametrize("variant", ["skip_fence", "promote_outdated"])
def test_checker_catches_a_broken_agent(variant):
    s = batch(CI_SCHEDULES, seed=1, variant=variant, stop_at_first=True)
    assert s["failing_seeds"], f"no violation found with variant {variant}"
    bad = s["failures"][0]
    assert {v.kind for v in bad.violations} & {"lost_write", "outdated_promoted", "two_writers"}
    again = run(bad.seed, variant=variant)  # the seed replays exactly
    assert [str(v) for v in again.violations] == [str(v) for v in bad.violations]
    assert again.trace == bad.trace
    small = shrink(bad, variant)
    assert small.violations and len(small.faults) <= len(bad.faults)


def test_the_correct_agent_survives_the_schedule_that_breaks_skip_fence():
    s = batch(CI_SCHEDULES, seed=1, variant="skip_fence", stop_at_first=True)
    assert run(s["failures"][0].seed).ok


def test_as_is_liveness_bug_and_its_fix():
    """Seed 32 (found by a batch): the agent DEMOTEs a node that holds the key but has no
    lease deadline yet while it is still Secondary; suspend-io closes I/O and secondary
    --force returns early, so the volume's later promotion blocks every write."""
    assert {v.kind for v in run(32, SCHEDULES[32], as_is=True).violations} == {"liveness"}
    assert run(32, SCHEDULES[32]).ok


def test_a_link_cut_with_a_dcs_partition_fails_over_without_losing_writes():
    faults = [Fault("link_cut", None, 3.0, 4.0), Fault("partition", "node1", 3.5, 3.0),
              Fault("partition", "node2", 3.5, 3.0)]
    for seed in range(5):
        r = run(seed, faults)
        assert r.ok, [str(v) for v in r.violations]


def test_cli_replay_prints_the_trace(capsys):
    assert main(["--replay", "7"]) == 0
    out = capsys.readouterr().out
    assert "seed 7: 0 violation(s)" in out and "acquired the leader key" in out


def test_as_is_two_writers_after_a_lease_regrant_and_its_fix():
    """Seed 14518 (found by a 5,000-schedule batch), faults 0 and 1: the leader's path to the
    DCS is cut one way, then the replication link; its volume is fencing (I/O closed) when
    the key expires and node1 takes over. When the path heals, node2's lease loop is granted a
    new lease, treats its deadline as the leader's and pushes it as the write lease; the
    volume's set_write_lease() resumes I/O in the middle of the fence: two writers."""
    faults = [SCHEDULES[14518][i] for i in (0, 1)]
    kinds = {v.kind for v in run(14518, faults, as_is=True).violations}
    # and then a lost write: the split brain the two writers made is resolved by the
    # policy, and one side's acknowledged writes go
    assert kinds == {"two_writers", "lost_write"}, kinds
    assert run(14518, faults).ok


@pytest.mark.parametrize("seed", [68805, 87905, 102590, 107336])
def test_a_promotion_with_the_link_down_fences_the_peer_first(seed):
    """Found by a 70,000-schedule batch: the leader recorded its peer UpToDate while
    the link was up, the link dropped before the volume promoted, and the new
    Primary acknowledged writes the cluster still counted on the peer for; the peer
    was promoted later without them. The volume now fences a peer it does not know
    Outdated when it promotes without a connection (DRBD runs fence-peer then too),
    and the agent re-reads the volume before it records (which closes the window in
    the model; the volume's side is tested on the real Replicator in
    tests/volume/test_replicator_safety.py)."""
    r = run(seed, SCHEDULES[seed])
    assert r.ok, [str(v) for v in r.violations]


def test_a_promotion_refused_by_a_resync_is_no_node_failure():
    """Seed 118244: node1 took the key just as a resync made it the target of node2's
    newer data; its volume refused to promote (Inconsistent) and the agent counted
    that as a node failure: unhealthy for 10 s while node2 was recorded Outdated, so
    nobody was writable 8 s after the faults healed. A refusal by the volume's own
    state is no failure now, and the record is never written from a disk that is
    not UpToDate."""
    r = run(118244, SCHEDULES[118244])
    assert r.ok, [str(v) for v in r.violations]


def test_the_checker_wants_both_disks_up_to_date_after_healing():
    """The redundancy invariant: a disk left Outdated for good (8b5a9bb, reverted: an
    agent adopting a stale fence record) is a violation even while a node is writable."""
    from tandem.sim.checker import check
    from tandem.sim.schedule import LIVENESS_BOUND, healed_at
    from tandem.sim.world import World
    from tandem.volume.states import DiskState

    faults = [Fault("link_cut", None, 3.0, 1.0)]
    world = World(11, faults)
    heal = healed_at(faults)
    world.run(heal + LIVENESS_BOUND + 0.5)
    assert check(world, heal, LIVENESS_BOUND) == []
    world.nodes["node2"].vol.disk = DiskState.OUTDATED
    assert [v.kind for v in check(world, heal, LIVENESS_BOUND)] == ["redundancy"]


def test_a_failed_disk_on_the_primary_hands_the_service_over_and_is_replaced():
    """node1 leads and its disk fails: no write completes there from then on, node2
    takes over with every acknowledged write, and after the heal (a new disk, since
    node2 is UpToDate) a full sync brings both disks back."""
    from tandem.sim.world import World
    faults = [Fault("disk_fail", "node1", 3.0, 2.0)]
    r = run(1, faults)  # seed 1: node1 leads at 3.0 s
    assert r.ok, [str(v) for v in r.violations]
    assert any("disk Failed" in line for line in r.trace)
    assert any("disk replaced" in line for line in r.trace)
    world = World(1, faults)
    world.run(3.0 + 2.0 + 8.5)
    assert world.nodes["node1"].vol.intervals[-1][1] <= 3.0 + 1e-9  # not writable past the failure
    assert any(s >= 3.0 for s, _ in world.nodes["node2"].vol.intervals)


def test_the_checker_catches_an_operator_replacing_the_only_current_disk():
    """Torture 25:15: a failed disk was replaced while its peer was Outdated (fenced):
    the failed disk held the only copy of the newest acknowledged writes."""
    variant = "replace_failed_disk"
    s = batch(CI_SCHEDULES, seed=1, variant=variant, stop_at_first=True)
    assert s["failing_seeds"], "no violation found with variant replace_failed_disk"
    bad = s["failures"][0]
    assert {v.kind for v in bad.violations} & {"lost_write", "liveness"}, [str(v) for v in bad.violations]
    assert run(bad.seed).ok  # the lab's rule (attach when the peer is not UpToDate) survives it


def test_the_split_brain_policy_ranked_by_memory_loses_writes_and_by_epoch_does_not():
    """Torture 90:37 in the simulation: the old rule of discard-least-recent-primary
    (the agent's in-memory "lost the leader key" mark, which a crash forgets) made the
    resync overwrite acknowledged writes; ranked by the persisted epoch of each side's
    latest promotion (and never keeping an Outdated disk), the same schedule loses
    nothing. Seed 1789 is the first of seeds 1..3000 that breaks the old rule."""
    bad = run(1789, SCHEDULES[1789], variant="policy_by_memory")
    assert any(v.kind == "lost_write" and "overwrote" in v.detail for v in bad.violations), \
        [str(v) for v in bad.violations]
    assert "resolved by discard-least-recent-primary" in "\n".join(bad.trace)
    good = run(1789, SCHEDULES[1789])
    assert good.ok, [str(v) for v in good.violations]


#: Simulation seed 185, found by the first batch that paused volume daemons.
SEED_185 = [Fault("pause", "node2", 11.777, 2.909), Fault("vpause", "node1", 11.804, 2.302),
            Fault("disk_fail", "node2", 14.778, 5.813)]


@pytest.mark.parametrize("variant", ["unfence_as_leader", "no_unfence"])
def test_a_stale_fence_is_undone_by_the_primary_that_resynced_its_peer(variant):
    """Seed 185: node2 (Primary) fenced node1, whose volume daemon was paused; node2's
    agent was paused too, so its key expired. When node1's daemon resumed, node2
    resynced it, but its unfence-peer, allowed only under the leader key (session
    23's rule), did nothing; node2's disk then failed, node1 adopted the stale
    Outdated as its own fence, and no disk could be promoted although node1 had
    every write. The unfence now needs no leadership: a compare-and-set on the
    record, after which any fence writes a newer revision."""
    bad = run(185, SEED_185, variant=f"{variant}+no_vouch")  # the vouch would hide it
    assert {v.kind for v in bad.violations} == {"liveness", "redundancy"}, [str(v) for v in bad.violations]
    good = run(185, SEED_185)
    assert good.ok, [str(v) for v in good.violations]
    assert any("unfence-peer: node1 recorded UpToDate again (resynced)" in ln for ln in good.trace)


def test_a_short_volume_daemon_pause_on_the_primary_moves_nothing():
    """agent.VOLUME_STATUS_GRACE in the model: a primary decides on the volume's last
    status for 2.5 s while status calls time out, so a 1.5 s pause of its volume daemon
    (peer's link dropped by the ping timeout, a fence, a resync after) is no failover;
    without the grace, the first 1 s timeout makes the leader step down."""
    from tandem.cluster.agent import VOLUME_STATUS_GRACE
    from tandem.sim import agent as sim_agent
    assert sim_agent.VOLUME_STATUS_GRACE == VOLUME_STATUS_GRACE
    faults = [Fault("vpause", "node1", 5.0, 1.5)]  # seed 1: node1 leads
    calm = run(1, faults)
    assert calm.ok and calm.promotions == 1, [str(v) for v in calm.violations]
    assert any("ping timeout (node1's volume daemon is silent)" in ln for ln in calm.trace)
    jumpy = run(1, faults, variant="no_status_grace")
    assert jumpy.ok and jumpy.promotions > 1


def test_the_agents_volume_call_timeouts_are_the_real_ones():
    import inspect

    from tandem.cluster import agent as real
    from tandem.sim import agent as sim_agent
    src = inspect.getsource(real.Agent)
    for name, value in (("STATUS_TIMEOUT", '"status", timeout=1.0'),
                        ("LEASE_PUSH_TIMEOUT", "_push_write_lease(self, timeout: float = 0.5)"),
                        ("FORCE_TIMEOUT", '"secondary", timeout=5.0, force=True')):
        assert value in src, name
    sim = (sim_agent.STATUS_TIMEOUT, sim_agent.LEASE_PUSH_TIMEOUT, sim_agent.FORCE_TIMEOUT)
    assert sim == (1.0, 0.5, 5.0)


def test_the_unfence_retries_as_the_daemon_does():
    from tandem.sim import agent as sim_agent
    from tandem.volume import replicator
    assert sim_agent.UNFENCE_ATTEMPTS == replicator.UNFENCE_ATTEMPTS


def test_an_outdated_disk_ahead_of_its_up_to_date_peer_is_the_resync_target():
    """Torture 193:37 in the model: node1 (Primary) is cut off from everything and
    demotes; node2 takes the key and records node1 Outdated, but its volume daemon
    pauses before the promotion, so node2 never writes. node1 adopts the record. When
    they reconnect, node1's generation is the newer one (its link loss started one):
    as the source it made node2 Outdated too (resync from an Outdated disk), and no
    disk could be promoted. The Outdated side's changes were never acknowledged: the
    UpToDate side is the source now (genid._outdated_ahead)."""
    faults = [Fault("link_cut", None, 3.0, 2.6), Fault("partition", "node1", 3.0, 2.6),
              Fault("vpause", "node2", 3.793, 4.1)]  # seed 1: node1 leads; the pause
    # falls between node2's volume record and its write-lease push
    bad = run(1, faults, variant="outdated_source")
    assert {v.kind for v in bad.violations} == {"liveness", "redundancy"}, [str(v) for v in bad.violations]
    assert any("node1   disk marked Outdated" in ln for ln in bad.trace)
    good = run(1, faults)
    assert good.ok, [str(v) for v in good.violations]
    assert any("node1 is ahead but Outdated: its changes go" in ln for ln in good.trace)


#: Seeds of one kind that session 24's rules left stuck (no data lost, an operator
#: needed): the peer adopts a stale fence in the moment before the unfence lands.
STALE_ADOPTION_SEEDS = [5236, 6898, 107079]


@pytest.mark.parametrize("seed", STALE_ADOPTION_SEEDS)
def test_a_stale_fence_adopted_before_the_unfence_lands_is_undone(seed):
    """The source of a resync is cut off from the DCS when it ends (partition or loss),
    so its unfence waits; its disk then fails, and the peer, which has every write,
    adopts the stale fence before the unfence lands: both disks Outdated for good
    under session 24's rules (`keep_stale_adoption`). The agent now undoes an
    adoption that a newer record supersedes while the disk is unchanged
    (decide.adoption_to_undo), and loses nothing."""
    r = run(seed, variant="keep_stale_adoption+no_vouch")  # the vouch would hide it
    assert {v.kind for v in r.violations} == {"liveness", "redundancy"}, [str(v) for v in r.violations]
    fixed = run(seed)
    assert fixed.ok, [str(v) for v in fixed.violations]
    assert any("disk UpToDate again" in ln for ln in fixed.trace)


def test_the_unfence_owed_by_a_failed_disk_outlives_a_power_cycle():
    """Seed 318038: node1 resynced node2 while cut off from the DCS, then its disk
    failed, so its unfence could not land; node2 adopted the stale fence; the disk's
    heal power-cycles the host, which forgot that node2 had every write
    (`forget_at_restart`): both disks Outdated and in sync for good. The mark is in
    the metadata now (MetaState.peer_had_all): the restarted daemon unfences."""
    bad = run(318038, variant="forget_at_restart")
    assert {v.kind for v in bad.violations} == {"liveness", "redundancy"}, [str(v) for v in bad.violations]
    good = run(318038)
    assert good.ok, [str(v) for v in good.violations]
    assert any("before a restart" in ln and "unfence-peer" in ln for ln in good.trace)


#: Simulation seed 911631 under a fault mix weighted to disk failures and paused volume
#: daemons: node1 resynced node2, was cut off from the DCS, and its disk failed; node2
#: adopted the stale fence; the disk's heal brought node1 back Outdated and connected
#: to node2 on the same data before the unfence could land.
SEED_911631 = [Fault("pause", "node1", 3.397, 2.998), Fault("vpause", "node2", 3.668, 3.805),
               Fault("link_cut", None, 7.279, 1.057), Fault("partition_up", "node1", 8.565, 5.103),
               Fault("disk_fail", "node1", 8.865, 4.158)]


def test_two_outdated_disks_in_sync_are_made_up_to_date_by_the_vouch_at_connect():
    """Both disks Outdated, connected on the same generation: before session 26 no rule
    made either UpToDate (the agent's undo wants no link), so an operator had to
    promote one (variant `no_vouch`). Now the side whose disk failed while the peer
    took every write (MetaState.peer_had_all) vouches for the peer at the handshake
    (genid.apply_vouches), and the peer is UpToDate."""
    stuck = run(911631, SEED_911631, variant="no_vouch")
    assert {v.kind for v in stuck.violations} == {"liveness", "redundancy"}, \
        [str(v) for v in stuck.violations]
    fixed = run(911631, SEED_911631)
    assert fixed.ok, [str(v) for v in fixed.violations]
    assert any("vouches" in ln for ln in fixed.trace)


def test_a_promotion_that_reaches_the_volume_after_the_write_lease_is_refused():
    """Seed 518200: node1's agent took the key, pushed its write lease and was paused
    (2.2 s) before its promotion reached the volume; meanwhile its lease lapsed, node2
    took the key, was promoted and fenced node1. Resumed, node1's agent promoted its
    volume anyway (`promote_past_lease`, the rule before session 27): a Primary of stale
    data recorded Outdated. The volume now refuses the agent's promotion once the
    write lease it pushed has run out.

    Since session 28 the model's agent, like the real one (_within_lease), looks at its
    lease before the start runs and abandons it: the volume's rule is the defence for a
    pause between that look and the start reaching the volume, a window the variant
    `late_start` keeps open."""
    bad = run(518200, variant="late_start+promote_past_lease")
    assert {v.kind for v in bad.violations} == {"lost_write", "outdated_promoted"}, \
        [str(v) for v in bad.violations]
    good = run(518200, variant="late_start")
    assert good.ok, [str(v) for v in good.violations]
    assert any("write lease has run out" in ln for ln in good.trace)
    assert run(518200).ok


#: Simulation seed 652145 (the faults as generate() made them in session 27).
SEED_652145 = [Fault("vpause", "node2", 10.601, 3.989), Fault("partition_up", "node1", 12.439, 3.203),
               Fault("partition_up", "node2", 14.354, 0.346), Fault("vpause", "node2", 15.419, 2.289),
               Fault("partition", "node1", 16.831, 1.629)]


def test_a_fence_of_an_earlier_term_does_not_finish_in_the_next_one():
    """Seed 652145, the model's own defect: node2's paused volume daemon resumed as
    Primary with a link loss to handle and started a fence; the agent's step-down then
    demoted it, and its next term began while that fence still retried. The model's
    fence went on into the new term, and its success kept I/O shut under the hold the
    demotion's suspend-io had left: no node writable after the heal. The replicator
    fails a fence's writes at a demotion and stops a fence that is no longer its
    current one (Replicator._fence_and_resume's token); the model now does the same."""
    r = run(652145, SEED_652145)
    assert r.ok, [str(v) for v in r.violations]
    assert any("fence-peer done" in ln for ln in r.trace)


def test_the_models_lease_hold_is_apart_from_the_operators_as_in_the_replicator():
    """Review 28: the model merged the write lease's hold with suspend-io's, so a lease
    renewal reopened I/O that an operator (or a demotion) had shut, where the volume
    keeps it shut (Replicator.set_write_lease lifts the lease's own hold only)."""
    from tandem.sim.world import World
    w = World(7, [])
    w.sim.run(1.0)  # a leader, a Primary
    vol = next(n.vol for n in w.nodes.values() if n.vol.role.value == "Primary")
    now = vol.clock.now()
    vol.suspend("suspend-io")
    vol.wlease = now - 0.1  # the lease ran out
    assert vol.write(10 ** 6) == "blocked" and vol.lease_held_io
    vol.set_write_lease(now + 5)
    assert not vol.io_open and not vol.lease_held_io and vol.held_by_operator  # the operator's stays
    vol.resume()
    assert vol.io_open and vol.write(10 ** 6 + 1) == "acked"
    vol.wlease = now - 0.1
    assert vol.write(10 ** 6 + 2) == "blocked" and not vol.held_by_operator
    vol.set_write_lease(now + 5)  # the lease's own hold: lifted by the next lease
    assert vol.io_open


#: Simulation seed 1007364 (session 28; the faults as generate() made them).
SEED_1007364 = [Fault("skew", "node1", 0.0, 0.0, -0.01335), Fault("skew", "node1", 0.0, 0.0, -0.00817),
                Fault("partition", "node1", 5.308, 4.124), Fault("partition", "node2", 7.793, 0.734),
                Fault("crash", "node2", 16.134, 2.492), Fault("pause", "node1", 17.047, 1.628)]


def test_an_agent_resumed_past_its_lease_abandons_the_promotion_before_the_volume_sees_it():
    """Seed 1007364: node1 took the key and was paused before its promotion reached the
    volume. The model called the volume anyway (with a timeout of 0), the volume refused
    for the write lease, and the refusal counted as a node failure: node1, the only
    UpToDate disk, sat out the penalty while the record kept node2 Outdated, no writer.
    The agent's _within_lease looks at the lease before the start has run, and abandons
    (no penalty): the model now does the same. (The product's refusal path, reached when
    the volume's answer is read before that look, is excused too:
    decide.start_failure_excuse.)"""
    r = run(1007364, SEED_1007364)
    assert r.ok, [str(v) for v in r.violations]
    assert any("node1" in ln and "promotion abandoned" in ln for ln in r.trace)
    late = run(1007364, SEED_1007364, variant="late_start")  # the refusal, excused
    assert late.ok, [str(v) for v in late.violations]
    assert any("not counted as a node failure: the leader key's lease ran out" in ln for ln in late.trace)


def test_without_the_lease_excuse_the_late_start_of_seed_1007364_leaves_no_writer(monkeypatch):
    """The product's rule is what saves the `late_start` run above: the same run with a
    start_failure_excuse that does not look at the lease (the rule before session 28)
    has no writable node after the heal."""
    import tandem.sim.agent as sim_agent
    from tandem.cluster.decide import start_failure_excuse
    monkeypatch.setattr(sim_agent, "start_failure_excuse", lambda st, left: start_failure_excuse(st, 1.0))
    r = run(1007364, SEED_1007364, variant="late_start")
    assert {v.kind for v in r.violations} == {"liveness"}, [str(v) for v in r.violations]
