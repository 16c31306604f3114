"""The edges of a volume's life: a daemon stopped while its Primary is still in
use, and a front end that outlives the role it was serving."""

from __future__ import annotations

import errno

import pytest

from tandem.volume.meta import MetaStore
from tandem.volume.replicator import Replicator, VolumeError
from tandem.volume.states import Role
from tests.volume.test_replicator_safety import BLOCK, make_replicator


def test_a_stop_whose_demotion_failed_leaves_the_metadata_saying_primary(tmp_path, monkeypatch):
    """The loop device still holds the FUSE file: the demotion fails and writes go on
    until the store closes, after the metadata was saved. Saved as not Primary, a
    write in between was on this disk only, its bit in memory only, and nothing at
    the next start would resync it. Saved as Primary, the activity log is replayed."""
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY  # no FUSE file: see test_replicator_safety

    def in_use(*_, **__):
        raise VolumeError("/dev/loop7 still holds the volume file (as _unmount says)")

    monkeypatch.setattr(rep, "demote", in_use)
    rep.stop()
    meta = MetaStore.open(tmp_path / "node1.meta")
    try:
        assert meta.state.primary and meta.crashed_primary
    finally:
        meta.close()


def test_a_clean_stop_leaves_the_metadata_saying_secondary(tmp_path):
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY
    rep.stop()
    meta = MetaStore.open(tmp_path / "node1.meta")
    try:
        assert not meta.state.primary
    finally:
        meta.close()


def test_reads_fail_once_the_volume_is_secondary(tmp_path):
    """A forced demotion tells the peer it may promote before the FUSE file is torn
    down; what this disk serves from then on may be older than the peer's."""
    rep: Replicator = make_replicator(tmp_path)
    try:
        rep.role = Role.PRIMARY
        assert rep.read(0, BLOCK) == bytes(BLOCK)
        rep.role = Role.SECONDARY
        with pytest.raises(OSError) as e:
            rep.read(0, BLOCK)
        assert e.value.errno == errno.EIO
    finally:
        rep.meta.close()
        rep.store.close()
