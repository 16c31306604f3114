"""decide.start_failure_excuse: which failed starts of the resource group cost the node a
health penalty (out of the race for the leader key for a while) and which do not."""

from __future__ import annotations

import pytest

from tandem.cluster.decide import start_failure_excuse


def status(disk: str = "UpToDate", connection: str = "", role: str = "Unknown") -> dict:
    return {"role": "Secondary", "disk": disk, "peer": {"connection": connection, "role": role}}


def test_a_start_that_failed_on_its_own_is_the_nodes_fault():
    assert start_failure_excuse(status(), 0.4) == ""
    assert start_failure_excuse(status(connection="Connected", role="Secondary"), 0.4) == ""
    assert start_failure_excuse(None, 0.4) == ""  # the volume daemon did not answer


@pytest.mark.parametrize("left", [None, 0.0, -1.5])
def test_a_lease_that_ran_out_is_not_the_nodes_fault(left):
    """Simulation seed 1007364: the agent, paused after pushing its write lease, had its
    promotion refused by the volume ("the agent's write lease has run out"); counted as a
    failure, the only UpToDate node sat out a penalty while the record kept its peer
    Outdated: no writer."""
    assert "lease ran out" in start_failure_excuse(status(), left)


@pytest.mark.parametrize(("st", "why"), [
    (status(disk="Outdated"), "local disk is Outdated"),
    (status(disk="Inconsistent", connection="SyncTarget"), "local disk is Inconsistent"),
    (status(connection="SyncTarget"), "this node is a resync target"),
    (status(connection="WFBitMapT"), "this node is a resync target"),
    (status(connection="Connected", role="Primary"), "the peer's volume is still Primary"),
])
def test_a_volume_not_ready_is_not_the_nodes_fault(st, why):
    assert start_failure_excuse(st, 0.4) == why
