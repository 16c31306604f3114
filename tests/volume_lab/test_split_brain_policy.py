"""after_split_brain policies on real daemons: automatic recovery, and refusal
when the two nodes are configured with different policies."""

from __future__ import annotations

import json
import time

import pytest

from tandem.errors import TandemError
from tests.volume_lab.harness import VolumePair, pwrite_sync, read_range

BLOCK = 4096


def _pair(lab, policy: str):
    vp = VolumePair(lab, after_split_brain=policy)
    try:
        yield vp
    finally:
        vp.teardown()


@pytest.fixture
def zero_changes(lab, healed):
    yield from _pair(lab, "discard-zero-changes")


@pytest.fixture
def secondary(lab, healed):
    yield from _pair(lab, "discard-secondary")


def _split(vp: VolumePair, node2_writes: bool) -> dict[str, int]:
    """Partition, make node2 Primary too (a new generation), write, demote, heal.

    Returns where each node's log stood before (earlier tests share the log files)."""
    marks = {h: len(vp.log(h)) for h in ("node1", "node2")}
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    vp.tandem("node2", "volume", "primary", "db")
    pwrite_sync(vp.device("node1"), 0, b"1" * BLOCK)
    if node2_writes:
        pwrite_sync(vp.device("node2"), BLOCK, b"2" * BLOCK)
    vp.tandem("node2", "volume", "secondary", "db")
    vp.lab.faults.heal()
    return marks


def _warnings(vp: VolumePair, host: str, marks: dict[str, int]) -> list[str]:
    return [ln for ln in vp.log(host)[marks[host]:].splitlines()
            if "split brain resolved automatically" in ln]


def _events(vp: VolumePair, kind: str) -> list[dict]:
    path = vp.lab.spec.event_file
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("kind") == kind]


def _identical(vp: VolumePair) -> None:
    assert vp.backing("node1").read_bytes() == vp.backing("node2").read_bytes()
    assert "0 blocks out of sync" in vp.tandem("node1", "volume", "verify", "db").stdout


def test_discard_zero_changes_resyncs_the_unchanged_side(zero_changes):
    vp = zero_changes
    vp.fresh("node1")
    assert vp.status("node1")["after_split_brain"] == "discard-zero-changes"
    assert "after-split-brain:discard-zero-changes" in vp.tandem("node1", "volume", "status",
                                                                 "db").stdout
    marks = _split(vp, node2_writes=False)
    vp.wait_connected_uptodate()
    for h in ("node1", "node2"):
        assert "standalone_reason" not in vp.status(h)["peer"], h
    assert read_range(vp.backing("node2"), 0, BLOCK) == b"1" * BLOCK
    _identical(vp)
    warn = _warnings(vp, "node2", marks)
    assert len(warn) == 1 and "discarding the changes made on node2" in warn[0], warn
    assert "discard-zero-changes" in warn[0]
    evs = [e for e in _events(vp, "split-brain-resolved") if e.get("node") == "node2"]
    assert evs and evs[-1]["victim"] == "node2" and evs[-1]["policy"] == "discard-zero-changes"


def test_discard_secondary_drops_the_secondarys_changes(secondary):
    vp = secondary
    vp.fresh("node1")
    before = read_range(vp.backing("node1"), BLOCK, BLOCK)
    marks = _split(vp, node2_writes=True)
    vp.wait_connected_uptodate()
    # node1 (Primary at the reconnect) keeps its write, node2's is overwritten
    assert read_range(vp.backing("node2"), 0, BLOCK) == b"1" * BLOCK
    assert read_range(vp.backing("node2"), BLOCK, BLOCK) == before != b"2" * BLOCK
    _identical(vp)
    warn = _warnings(vp, "node1", marks)
    assert len(warn) == 1 and "discarding the changes made on node2" in warn[0], warn
    assert "resyncing up to" in warn[0] and "from node1" in warn[0]


def test_different_policies_are_refused(secondary):
    vp = secondary
    vp.fresh("node1")
    vp.stop("node2")
    mark = len(vp.log("node2"))
    other = vp.config.with_name("cluster-node2.toml")
    other.write_text(vp.config.read_text().replace('"discard-secondary"', '"disconnect"'))
    vp.host_configs["node2"] = other
    try:
        pwrite_sync(vp.device("node1"), 0, b"3" * BLOCK)  # node2 is behind now
        vp.start("node2")
        for h in ("node1", "node2"):
            vp.wait(lambda h=h: vp.status(h)["peer"]["connection"] == "StandAlone", 15,
                    f"{h} StandAlone")
        reason = vp.status("node2")["peer"]["standalone_reason"]
        assert "after-split-brain policies differ (disconnect here, discard-secondary on the peer)" \
            in reason, reason
        assert vp.status("node2")["after_split_brain"] == "disconnect"
        time.sleep(1.0)
        assert vp.status("node1")["peer"]["connection"] == "StandAlone", "must stay refused"
        assert read_range(vp.backing("node2"), 0, BLOCK) != b"3" * BLOCK, "never synced"
        lines = [ln for ln in vp.log("node2")[mark:].splitlines() if "policies differ" in ln]
        assert lines, vp.log("node2")[-2000:]
    finally:
        vp.host_configs.pop("node2", None)
        other.unlink(missing_ok=True)


@pytest.fixture
def least_recent(lab, healed):
    yield from _pair(lab, "discard-least-recent-primary")


def test_an_undecided_split_brain_is_tried_again_after_a_role_change(least_recent):
    """Torture 10:4: both nodes Primary at the reconnect, so discard-least-recent-primary
    could not decide; later only node1 was Primary, but both stayed StandAlone until an
    operator ran discard-my-data. A policy that cannot decide now retries the handshake
    (at a role change at once, else every few seconds), and with one side Primary the
    Secondary is the least recent Primary."""
    vp = least_recent
    vp.fresh("node1")
    marks = {h: len(vp.log(h)) for h in ("node1", "node2")}
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    vp.tandem("node2", "volume", "primary", "db")
    pwrite_sync(vp.device("node1"), 0, b"1" * BLOCK)
    pwrite_sync(vp.device("node2"), BLOCK, b"2" * BLOCK)
    vp.lab.faults.heal()  # both Primary: the policy has no victim
    for h in ("node1", "node2"):
        vp.wait(lambda h=h: "cannot decide" in vp.log(h)[marks[h]:], 15, f"{h} to refuse")
    t0 = time.monotonic()
    vp.tandem("node2", "volume", "secondary", "db")
    vp.wait_connected_uptodate()
    # Without the retry both stay StandAlone for good; the bound leaves room for a
    # loaded machine (10.5 s once with three torture labs running beside it).
    assert time.monotonic() - t0 < 20
    assert read_range(vp.backing("node2"), 0, BLOCK) == b"1" * BLOCK  # node1 (Primary) kept
    assert read_range(vp.backing("node2"), BLOCK, BLOCK) != b"2" * BLOCK
    _identical(vp)


def _call(vp: VolumePair, host: str, cmd: str, **args):
    from tandem.volume import control
    return control.call(vp.lab.host_dir(host) / "run" / "volume-db.sock", cmd, timeout=10, **args)


def test_least_recent_primary_survives_a_restart_of_the_older_primary(least_recent):
    """Torture 90:37: node2 led (epoch 42) and lost the key; node1 led next (epoch 43),
    wrote, and lost the key in turn; node2 crashed and came back in between, so only
    node1 remembered losing leadership. The policy kept node2 and threw away node1's
    acknowledged writes. The promotion's epoch, kept in the metadata, ranks them."""
    vp = least_recent
    vp.fresh("node1")
    vp.tandem("node1", "volume", "secondary", "db")
    for bad in ("42", True, -1, 1.5):  # refused with a clear line, nothing changes
        with pytest.raises(TandemError, match="'epoch' must be the leader epoch"):
            _call(vp, "node2", "primary", epoch=bad)
    assert vp.status("node2")["role"] == "Secondary" and vp.status("node2")["primary_epoch"] == 0
    _call(vp, "node2", "primary", epoch=42)
    assert vp.status("node2")["primary_epoch"] == 42
    # The peer's epoch is the floor of the cluster's epoch counter too (a recreated DCS).
    vp.wait(lambda: vp.status("node1")["epoch_seen"] == 42, 10, "node1 sees node2's epoch")
    assert vp.status("node1")["primary_epoch"] == 0
    marks = {h: len(vp.log(h)) for h in ("node1", "node2")}
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node1")["peer"]["connection"] != "Connected", 10, "link down")
    pwrite_sync(vp.device("node2"), 0, b"2" * BLOCK)  # never acknowledged in the cluster
    _call(vp, "node2", "lost-leadership")
    vp.tandem("node2", "volume", "secondary", "db")
    _call(vp, "node1", "primary", epoch=43)
    pwrite_sync(vp.device("node1"), BLOCK, b"1" * BLOCK)  # the acknowledged writes
    _call(vp, "node1", "lost-leadership")
    vp.tandem("node1", "volume", "secondary", "db")
    vp.stop("node2")  # the crash: node2 forgets it lost the key; its epoch stays
    vp.start("node2")
    assert vp.status("node2")["primary_epoch"] == 42
    vp.lab.faults.heal()
    vp.wait_connected_uptodate()
    assert vp.status("node2")["epoch_seen"] == 43 and vp.status("node1")["epoch_seen"] == 43
    assert read_range(vp.backing("node2"), BLOCK, BLOCK) == b"1" * BLOCK  # node1's data kept
    assert read_range(vp.backing("node1"), 0, BLOCK) != b"2" * BLOCK
    _identical(vp)
    warn = _warnings(vp, "node1", marks)
    assert len(warn) == 1 and "discarding the changes made on node2" in warn[0], warn
    assert "node2 was last promoted at epoch 42, node1 at 43" in warn[0], warn
