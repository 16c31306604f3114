"""fence_to_adopt: when a replica's agent marks its own disk Outdated because the
leader recorded a fence of it in the DCS."""

from __future__ import annotations

from tandem.cluster.decide import fence_to_adopt
from tandem.dcs.view import VolumeState
from tandem.volume.states import DiskState

UP, OUT = DiskState.UP_TO_DATE, DiskState.OUTDATED


def vol(connection: str) -> dict:
    return {"role": "Secondary", "disk": "UpToDate", "peer": {"connection": connection}}


def record(node2: DiskState, revision: int) -> VolumeState:
    return VolumeState("r0", (("node1", UP), ("node2", node2)), revision=revision)


def test_a_fence_recorded_before_this_volume_noticed_the_cut_is_adopted_after() -> None:
    """The leader's volume noticed the cut first and its fence reached the DCS while
    this node's volume, within its ping timeout, still said Connected: a lab test
    waited 10 s for the disk to go Outdated and it never did."""
    rev, adopt = fence_to_adopt(vol("Connected"), record(UP, 10), "node2", False, -1)
    assert (rev, adopt) == (10, False)
    rev, adopt = fence_to_adopt(vol("Connected"), record(OUT, 11), "node2", False, rev)
    assert (rev, adopt) == (10, False)  # the fence, read while the link still looks up
    rev, adopt = fence_to_adopt(vol("Connecting"), record(OUT, 11), "node2", False, rev)
    assert adopt  # the drop shows here now: the fence applies


def test_a_fence_older_than_the_link_is_not_adopted() -> None:
    # the record was rewritten UpToDate since the link came up; then a drop: the
    # leader has not fenced (yet), so nothing to adopt
    rev, _ = fence_to_adopt(vol("Connected"), record(UP, 12), "node2", False, 11)
    assert fence_to_adopt(vol("Connecting"), record(UP, 12), "node2", False, rev) == (12, False)
    # a fence recorded after the drop is adopted
    assert fence_to_adopt(vol("Connecting"), record(OUT, 13), "node2", False, rev)[1]
    # never on the Primary, never on a disk already Outdated
    assert not fence_to_adopt(vol("Connecting"), record(OUT, 13), "node2", True, rev)[1]
    assert not fence_to_adopt({**vol("Connecting"), "disk": "Outdated"}, record(OUT, 13), "node2",
                              False, rev)[1]
