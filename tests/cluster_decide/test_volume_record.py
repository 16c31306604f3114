"""leader_volume_record: what the leader writes of the volume in the DCS."""

from __future__ import annotations

import pytest

from tandem.cluster.decide import fence_to_adopt, leader_volume_record, record_write_needed
from tandem.dcs.view import VolumeState
from tandem.volume.states import DiskState

UP, OUT, INC = DiskState.UP_TO_DATE, DiskState.OUTDATED, DiskState.INCONSISTENT


def status(disk: str = "UpToDate", connection: str = "Connected", peer_disk: str = "UpToDate") -> dict:
    return {"role": "Primary", "disk": disk, "peer": {"connection": connection, "disk": peer_disk}}


def rec(node1: DiskState, node2: DiskState, revision: int = 5) -> VolumeState:
    return VolumeState("r0", (("node1", node1), ("node2", node2)), revision=revision)


def test_an_in_sync_peer_is_recorded_up_to_date_and_a_cut_one_outdated() -> None:
    assert leader_volume_record(status(), None, "r0", "node1", "node2").disks == rec(UP, UP).disks
    cut = leader_volume_record(status(connection="Connecting", peer_disk="DUnknown"), rec(UP, UP),
                               "r0", "node1", "node2")
    assert cut.disks == rec(UP, OUT).disks
    # a worse record of the peer is kept, never raised to Outdated
    assert leader_volume_record(status(connection="SyncSource", peer_disk="Inconsistent"),
                                rec(UP, INC), "r0", "node1", "node2").disks == rec(UP, INC).disks


@pytest.mark.parametrize("volume", [None, {}, status(disk="Inconsistent"), status(disk="Outdated")])
def test_nothing_is_recorded_without_a_status_of_an_up_to_date_local_disk(volume) -> None:
    """A status call that timed out (a slow or paused daemon) left the agent with no
    status, and the record then said "node1 UpToDate, node2 Outdated" of an in-sync
    peer (review 23): had node1 died then, node2 would have outdated its complete disk
    and nobody could be promoted."""
    assert leader_volume_record(volume, rec(UP, UP), "r0", "node1", "node2") is None


def test_the_record_the_old_code_wrote_without_a_status_makes_the_peer_outdate_itself() -> None:
    """Why None matters: the record with the peer Outdated, read by the peer once its
    link to the dead leader drops, makes it outdate its own disk."""
    bogus = rec(UP, OUT, revision=7)
    node2 = {"role": "Secondary", "disk": "UpToDate", "peer": {"connection": "Connecting"}}
    assert fence_to_adopt(node2, bogus, "node2", False, 6) == (6, True)


def test_a_promotion_on_peer_outdated_writes_the_record_again() -> None:
    """Review 24: the agent promoted on a record calling the peer Outdated without
    writing (nothing had changed) and the volume skipped the fence; a request sent
    before (our own record write that timed out, an unfence-peer) could still be applied
    and call the peer UpToDate. Written again, the record's new revision fails them."""
    same = rec(UP, OUT)
    cut = leader_volume_record(status(connection="Connecting", peer_disk="DUnknown"), same,
                               "r0", "node1", "node2")
    assert cut.disks == same.disks
    assert record_write_needed(cut, same, "node2", promoting=True)
    assert not record_write_needed(cut, same, "node2", promoting=False), "a leader's cycle"
    in_sync = leader_volume_record(status(), rec(UP, UP), "r0", "node1", "node2")
    assert not record_write_needed(in_sync, rec(UP, UP), "node2", promoting=True), \
        "the volume fences itself if the link drops: nothing to write"
    assert record_write_needed(in_sync, rec(UP, OUT), "node2", promoting=False), "a change"
