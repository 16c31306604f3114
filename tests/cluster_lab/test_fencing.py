"""Fencing in the lab: with a long leader lease, a confirmed fence lets the
survivor take over long before the lease expires; a failing fence agent
changes nothing (the survivor waits for the lease). Proven with the lab's
monotonic event log, relative to the lease TTL, and the writer's log.

One lab for both: node2 is fenced by the lab agent (cluster-wide [fencing]);
node1 by an exec agent that always fails ([nodes.node1.fencing]). So crashing
node1 shows the slow, lease-bound path and crashing node2 the fenced one.
"""

from __future__ import annotations

import pytest

from tandem.lab.clusterconf import lab_fencing
from tandem.lab.stack import LabStack
from tests.cluster_lab.lab_prefix import lab_prefix
from tests.cluster_lab.test_failover import (
    assert_no_loss_no_overlap,
    finish_writer,
    run_writer_through,
)

pytestmark = pytest.mark.lab
_prefix = lab_prefix("hf")
TTL = 10  #: the leader lease: long, so a takeover well before it can only come from a fence
WELL_BEFORE = 0.6  #: a fenced takeover comes within this fraction of the TTL after the fault


@pytest.fixture(scope="module")
def fstack(lab):
    notify_log = lab.spec.dir / "etc" / "notify.log"
    hook = ("echo $TANDEM_NODE $TANDEM_ROLE_OLD $TANDEM_ROLE_NEW $TANDEM_EPOCH"
            f" leader=$TANDEM_LEADER >> {notify_log}")
    extra = lab_fencing(lab) + f"""
[nodes.node1.fencing]
agent = "exec"
command = ["sh", "-c", "echo no power switch answers for $TANDEM_FENCE_NODE >&2; exit 1"]
timeout = 5

[agent]
notify = [["sh", "-c", "{hook}"]]
notify_timeout = 5
"""
    st = LabStack(lab, volume_size="256MiB", lease_ttl=TTL, extra_config=extra)
    st.notify_log = notify_log
    try:
        st.start(timeout=180)
        yield st
    finally:
        st.stop()


def events_after(stack, t: float, kind: str, **match) -> list[dict]:
    return [e for e in stack.lab.events.read(kind) if e["t"] > t
            and all(e.get(k) == v for k, v in match.items())]


def resync(stack, host: str) -> None:
    stack.restart_host(host)
    stack.wait(lambda: all(n["disk"] == "UpToDate" and n["online"] for n in stack.status()["nodes"]),
               120, f"{host} back and in sync")


def test_1_failing_fence_agent_means_waiting_for_the_lease(fstack, healed):
    stack = fstack
    assert stack.wait_service(60) == "node1"
    out, t_fault = run_writer_through(stack, lambda: stack.lab.faults.crash("node1"))
    assert stack.wait_service(TTL + 30) == "node2"
    acks, _ = finish_writer(stack, out)
    failed = events_after(stack, t_fault, "fence_failed", node="node2", target="node1")
    assert failed, "node2 never tried its fencing agent"
    assert "no power switch answers for node1" in failed[0]["reason"]
    assert not events_after(stack, t_fault, "fence_recorded")
    acquired = events_after(stack, t_fault, "leader_acquired", node="node2")
    assert acquired and "fenced" not in acquired[0]
    # Without a fence the key is only free once the lease ran out: node1's last
    # keepalive was at most one renewal period (0.5 s) before the crash.
    assert acquired[0]["t"] - t_fault >= TTL - 0.5, acquired[0]["t"] - t_fault
    assert_no_loss_no_overlap(stack, acks)
    resync(stack, "node1")


def test_2_confirmed_fence_takes_over_well_before_the_lease_expires(fstack, healed):
    stack = fstack
    assert stack.leader() == "node2", "test_1 leaves the service on node2"
    stack.wait_service(60)
    out, t_fault = run_writer_through(stack, lambda: stack.lab.faults.crash("node2"))
    assert stack.wait_service(TTL + 30) == "node1"
    acks, _ = finish_writer(stack, out)
    start = events_after(stack, t_fault, "fence_start", node="node1", target="node2")
    confirmed = events_after(stack, t_fault, "fence_confirmed", node="node1", target="node2")
    recorded = events_after(stack, t_fault, "fence_recorded", node="node1", target="node2")
    acquired = events_after(stack, t_fault, "leader_acquired", node="node1", fenced="node2")
    assert start and confirmed and recorded and acquired, (start, confirmed, recorded, acquired)
    assert start[0]["t"] < confirmed[0]["t"] < recorded[0]["t"] < acquired[0]["t"]
    # The fence is the lab's crash of node2, in the event log like any crash.
    crashes = events_after(stack, start[0]["t"], "fault", fault="crash", host="node2")
    assert crashes and crashes[0]["t"] < confirmed[0]["t"]
    # Well before the lease (relative to the TTL, not wall time).
    assert acquired[0]["t"] - t_fault < WELL_BEFORE * TTL, acquired[0]["t"] - t_fault
    assert start[0]["token"] == recorded[0]["token"]
    assert_no_loss_no_overlap(stack, acks)
    st = stack.status()
    assert st["last_failover"]["node"] == "node1" and "fenced failover" in st["last_failover"]["reason"]
    node2 = next(n for n in st["nodes"] if n["node"] == "node2")
    assert not node2["online"], "the fenced node's lease was ended with the takeover"
    resync(stack, "node2")


def test_3_unplugged_primary_is_fenced_before_the_survivor_promotes(fstack, healed):
    """The case fencing exists for: node2's cables are out but it still runs and
    believes it is primary until its own lease deadline. node1 must not promote
    before node2 is off; with the lab fence it is powered off (crashed) first."""
    stack = fstack
    stack.tandem("witness", "switchover", "--to", "node2", "--force", timeout=60)
    assert stack.wait_service(60) == "node2"
    out, t_fault = run_writer_through(stack, lambda: stack.lab.faults.unplug("node2"))
    assert stack.wait_service(TTL + 30) == "node1"
    acks, _ = finish_writer(stack, out)
    crash = events_after(stack, t_fault, "fault", fault="crash", host="node2")
    acquired = events_after(stack, t_fault, "leader_acquired", node="node1")
    assert crash and acquired and acquired[0].get("fenced") == "node2", (crash, acquired)
    assert crash[0]["t"] < acquired[0]["t"], "node1 took over before node2 was powered off"
    assert acquired[0]["t"] - t_fault < WELL_BEFORE * TTL, acquired[0]["t"] - t_fault
    assert "node2" in stack.lab.read_state()["down"]
    assert_no_loss_no_overlap(stack, acks)
    resync(stack, "node2")


def test_9_notify_hooks_saw_every_role_change(fstack):
    lines = [line.split() for line in fstack.notify_log.read_text().splitlines()]
    # node1 became primary first; then every failover and switchover above.
    assert lines[0][:3] == ["node1", "replica", "primary"], lines
    changes = [tuple(x[:3]) for x in lines]
    assert ("node2", "replica", "primary") in changes and ("node1", "primary", "replica") in changes
    assert changes.count(("node1", "replica", "primary")) >= 2
    epochs = [int(x[3]) for x in lines if x[2] == "primary"]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs), lines
    # The new primary names itself as the leader: the view read before the acquire
    # said nobody, or the fenced node after a fenced takeover (review 23).
    assert all(x[4] == f"leader={x[0]}" for x in lines if x[2] == "primary"), lines
