"""fence_to_adopt: when a replica's agent marks its own disk Outdated because the
leader recorded a fence of it in the DCS; adoption_to_undo: when it takes that back."""

from __future__ import annotations

from tandem.cluster.decide import adoption_to_undo, fence_to_adopt
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


MARK = 41  # the volume's mark of the agent's outdate (its metadata's sequence number)


def outdated(connection: str = "Connecting", role: str = "Secondary") -> dict:
    return {"role": role, "disk": "Outdated", "peer": {"connection": connection}}


def test_a_fence_adopted_just_before_the_unfence_landed_is_undone() -> None:
    """Simulation seeds 5236, 6898, 107079: the resync source's unfence (record 14)
    lands just after this node adopted its stale fence (record 13); its own disk has
    failed since, so without the undo both disks stay Outdated for good."""
    adopted = (13, MARK)
    assert adoption_to_undo(adopted, outdated(), record(UP, 14), "node2") == (adopted, True)


def test_nothing_is_undone_on_the_fence_itself_or_on_a_newer_fence() -> None:
    adopted = (13, MARK)
    assert adoption_to_undo(adopted, outdated(), record(OUT, 13), "node2") == (adopted, False)
    assert adoption_to_undo(adopted, outdated(), record(OUT, 15), "node2") == (adopted, False)
    assert adoption_to_undo(adopted, outdated(), None, "node2") == (adopted, False)
    # a record "newer" only by a smaller revision (an older read) changes nothing
    assert adoption_to_undo(adopted, outdated(), record(UP, 12), "node2") == (adopted, False)


def test_a_disk_no_longer_outdated_forgets_the_adoption_and_a_primary_waits() -> None:
    """Resynced, attached, promoted by force: the adoption is forgotten, never applied
    (the volume also refuses a mark its metadata has moved past)."""
    adopted = (13, MARK)
    for disk in ("UpToDate", "Inconsistent", "Failed"):
        assert adoption_to_undo(adopted, {**outdated(), "disk": disk}, record(UP, 14),
                                "node2") == (None, False)
    assert adoption_to_undo(adopted, outdated(role="Primary"), record(UP, 14), "node2") == (adopted, False)


def test_a_connected_disk_is_left_to_the_link_and_an_unknown_status_keeps_the_adoption() -> None:
    adopted = (13, MARK)
    assert adoption_to_undo(adopted, outdated("Connected"), record(UP, 14), "node2") == (adopted, False)
    assert adoption_to_undo(adopted, outdated("SyncTarget"), record(UP, 14), "node2") == (adopted, False)
    assert adoption_to_undo(adopted, None, record(UP, 14), "node2") == (adopted, False)
    assert adoption_to_undo(None, outdated(), record(UP, 14), "node2") == (None, False)
