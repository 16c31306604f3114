"""Metadata file: atomic updates and crash safety."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tandem.errors import TandemError
from tandem.volume.genid import GenerationIds
from tandem.volume.meta import MetaError, MetaStore
from tandem.volume.states import DiskState

SIZE = 64 << 20


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "r0.meta"


def corrupt(path: Path, slot: int, at: int = 40) -> None:
    """Flip bytes inside one slot, as a torn or rotten write would."""
    slot_size = path.stat().st_size // 2
    with open(path, "r+b") as f:
        f.seek(slot * slot_size + at)
        old = f.read(4)
        f.seek(slot * slot_size + at)
        f.write(bytes(b ^ 0xFF for b in old))


def newest_slot(store: MetaStore) -> int:
    return store._slot


def test_create_and_reopen(path: Path) -> None:
    with MetaStore.create(path, SIZE, "node1", disk=DiskState.UP_TO_DATE) as store:
        assert store.state.node == "node1" and store.state.size == SIZE
        assert store.bitmap.weight == 0
    with MetaStore.open(path) as store:
        assert store.state.disk is DiskState.UP_TO_DATE
        assert store.state.seq == 2


def test_create_refuses_to_overwrite(path: Path) -> None:
    MetaStore.create(path, SIZE, "node1").close()
    with pytest.raises(MetaError, match="exists"):
        MetaStore.create(path, SIZE, "node1")


def test_update_persists_all_fields_and_the_bitmap(path: Path) -> None:
    with MetaStore.create(path, SIZE, "node1") as store:
        gen = GenerationIds(11, 10, (9,))
        store.bitmap.set_range(8192, 100)
        state = store.update(
            disk=DiskState.OUTDATED, generations=gen, peer_outdated=True, al_extents=(3, 1), primary=True
        )
        assert state.seq == 3
        store.mark_dirty_and_persist([(0, 1), (SIZE - 1, 1)])
    with MetaStore.open(path) as store:
        s = store.state
        assert (s.disk, s.generations, s.peer_outdated, s.al_extents) == (
            DiskState.OUTDATED,
            gen,
            True,
            (3, 1),
        )
        assert store.crashed_primary  # it was Primary when last written
        assert [b for b in range(store.bitmap.nbits) if store.bitmap.test(b)] == [
            0,
            2,
            store.bitmap.nbits - 1,
        ]


def test_updates_alternate_slots(path: Path) -> None:
    with MetaStore.create(path, SIZE, "node1") as store:
        slots = []
        for _ in range(4):
            store.update()
            slots.append(newest_slot(store))
    assert slots == [0, 1, 0, 1]


@pytest.mark.parametrize("torn", [0, 1])
def test_corrupt_newest_slot_falls_back_to_previous_state(path: Path, torn: int) -> None:
    with MetaStore.create(path, SIZE, "node1") as store:
        store.update(disk=DiskState.UP_TO_DATE)
        if newest_slot(store) != torn:
            store.update(disk=DiskState.OUTDATED)  # the newest slot is `torn`
        newest = store.state
    corrupt(path, torn)
    with MetaStore.open(path) as store:
        assert store.state.seq == newest.seq - 1
        assert store.state != newest


def test_corrupt_older_slot_is_ignored(path: Path) -> None:
    with MetaStore.create(path, SIZE, "node1") as store:
        store.update(disk=DiskState.UP_TO_DATE)
        newest_seq, older = store.state.seq, newest_slot(store) ^ 1
    corrupt(path, older, at=3)  # in the magic
    with MetaStore.open(path) as store:
        assert store.state.seq == newest_seq and store.state.disk is DiskState.UP_TO_DATE
        store.update(disk=DiskState.OUTDATED)  # overwrites the bad slot
    with MetaStore.open(path) as store:
        assert store.state.disk is DiskState.OUTDATED


def test_corrupt_bitmap_bytes_are_detected(path: Path) -> None:
    with MetaStore.create(path, SIZE, "node1") as store:
        store.mark_dirty_and_persist([(0, SIZE)])
        newest = newest_slot(store)
    slot_size = path.stat().st_size // 2
    raw = path.read_bytes()
    at = raw.index(b"\xff" * 256, newest * slot_size) + 1000  # inside the all-dirty bitmap
    assert at < (newest + 1) * slot_size
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\x00")
    with MetaStore.open(path) as store:
        assert store.bitmap.weight == 0  # fell back to the state before the marking


def test_both_slots_corrupt_is_a_clear_error(path: Path) -> None:
    MetaStore.create(path, SIZE, "node1").close()
    corrupt(path, 0)
    corrupt(path, 1, at=2)
    with pytest.raises(MetaError) as info:
        MetaStore.open(path)
    msg = str(info.value)
    assert "both slots" in msg and "slot 0: checksum" in msg and "slot 1: bad magic" in msg
    assert isinstance(info.value, TandemError)


def test_not_a_metadata_file(path: Path) -> None:
    path.write_bytes(b"hello")
    with pytest.raises(MetaError, match="not a tandem metadata file"):
        MetaStore.open(path)
    with pytest.raises(MetaError, match="cannot open"):
        MetaStore.open(path.with_name("missing"))


@pytest.mark.parametrize("how", ["cut to one slot", "one slot longer", "one block longer"])
def test_a_cut_or_extended_file_is_refused_not_read_one_update_old(path: Path, how: str) -> None:
    """The slot size came from the file's size: cut or extended, the second slot was
    read at the wrong offset, looked never written, and the first was taken silently:
    one update older than the truth (before a fence's Outdated, before the Inconsistent
    a resync target starts with)."""
    store = MetaStore.create(path, SIZE, "node1", disk=DiskState.UP_TO_DATE)
    store.update(disk=DiskState.OUTDATED)  # the newest state, in the second slot
    store.close()
    total = path.stat().st_size
    with open(path, "r+b") as f:
        if how == "cut to one slot":
            f.truncate(total // 2)
        else:
            f.truncate(total + (total // 2 if how == "one slot longer" else 4096))
    with pytest.raises(MetaError, match="truncated or extended"):
        MetaStore.open(path)


def test_update_rejects_managed_fields(path: Path) -> None:
    with MetaStore.create(path, SIZE, "node1") as store:
        with pytest.raises(ValueError):
            store.update(seq=99)
        with pytest.raises(ValueError):
            store.update(size=1)
        with pytest.raises(TypeError):
            store.update(no_such_field=1)


def test_ten_gib_bitmap_fits(tmp_path: Path) -> None:
    path = tmp_path / "big.meta"
    with MetaStore.create(path, 10 << 30, "node1") as store:
        store.mark_dirty_and_persist([(5 << 30, 1 << 20)])
    assert os.path.getsize(path) < 1 << 20
    with MetaStore.open(path) as store:
        assert store.bitmap.weight == 256


def test_persist_writes_a_bitmap_snapshot_not_the_live_bitmap(path: Path) -> None:
    """A resync checkpoint persists the bits as they were before its fdatasync:
    bits cleared since (data not yet durable) must stay set on disk."""
    with MetaStore.create(path, SIZE, "node1") as store:
        store.bitmap.set_all()
        store.bitmap.clear_range(0, 1 << 20)
        snap = store.bitmap.raw
        store.bitmap.clear_range(1 << 20, 1 << 20)  # after the snapshot
        store.persist(snap)
        live_weight = store.bitmap.weight
    with MetaStore.open(path) as store:
        assert not store.bitmap.is_dirty(0, 1 << 20)
        assert store.bitmap.is_dirty(1 << 20, 1)
        assert store.bitmap.weight == live_weight + 256


def test_bits_cleared_for_data_not_yet_synced_reach_the_file_set(path: Path) -> None:
    """The sync source clears what it has sent, so the target's saved bitmap alone
    says what it still lacks: any metadata write (a link loss, a failed disk, the
    next connect) must keep the bits of data written but not yet fdatasync'ed set,
    until the fdatasync that made them durable is noted."""
    mib = 1 << 20
    with MetaStore.create(path, SIZE, "node1") as store:
        store.bitmap.set_all()
        store.persist()
        store.clear_written([(0, mib), (4 * mib, mib)])
        store.clear_written([(8 * mib, mib)])
        assert not store.bitmap.is_dirty(0, mib) and not store.bitmap.is_dirty(8 * mib, mib)
        store.update(disk=DiskState.INCONSISTENT)  # e.g. the link went: not synced yet
    with MetaStore.open(path) as store:
        assert store.bitmap.is_dirty(0, mib) and store.bitmap.is_dirty(4 * mib, mib)
        assert store.bitmap.is_dirty(8 * mib, mib) and store.bitmap.weight * 4096 == SIZE
        # what a restart reads is all the store knows: its own clears start again
        store.clear_written([(0, mib), (4 * mib, mib)])
        mark = store.undurable_mark()
        store.clear_written([(8 * mib, mib)])
        store.durable_upto(mark)  # an fdatasync begun after the first two
        store.persist()
    with MetaStore.open(path) as store:
        assert not store.bitmap.is_dirty(0, mib) and not store.bitmap.is_dirty(4 * mib, mib)
        assert store.bitmap.is_dirty(8 * mib, mib)
        assert store.bitmap.weight * 4096 == SIZE - 2 * mib


def test_persist_rejects_a_snapshot_of_another_size(path: Path) -> None:
    with MetaStore.create(path, SIZE, "node1") as store, pytest.raises(MetaError, match="snapshot"):
        store.persist(b"\xff" * 7)


def rewrite_json(path: Path, slot: int, edit) -> None:
    """Rewrite one slot's JSON fields with ``edit`` and a valid checksum: what
    another version of tandem would have written."""
    import json
    import struct

    from tandem.volume.meta import _SLOT_HEADER, _digest
    slot_size = path.stat().st_size // 2
    with open(path, "r+b") as f:
        f.seek(slot * slot_size)
        data = f.read(slot_size)
        magic, seq, length, _ = _SLOT_HEADER.unpack_from(data)
        body = data[_SLOT_HEADER.size:_SLOT_HEADER.size + length]
        (jlen,) = struct.unpack_from("!I", body)
        fields = json.loads(body[4:4 + jlen])
        edit(fields)
        js = json.dumps(fields).encode()
        body = struct.pack("!I", len(js)) + js + body[4 + jlen:]
        f.seek(slot * slot_size)
        f.write(_SLOT_HEADER.pack(magic, seq, len(body), _digest(seq, body)) + body)


def test_a_format_1_file_opens_and_is_written_back_in_the_current_format(path: Path) -> None:
    from tandem.volume.meta import FORMAT_VERSION

    def as_format_1(fields):
        fields["version"] = 1
        del fields["primary_epoch"]  # format 2 added it
    with MetaStore.create(path, SIZE, "node1", disk=DiskState.UP_TO_DATE) as store:
        slot = newest_slot(store)
    rewrite_json(path, slot, as_format_1)
    with MetaStore.open(path) as store:
        assert store.state.disk is DiskState.UP_TO_DATE and store.state.primary_epoch == 0
        store.update(primary_epoch=7)
    with MetaStore.open(path) as store:
        assert store.state.primary_epoch == 7
    assert f'"version":{FORMAT_VERSION}'.encode() in path.read_bytes()


def test_a_format_2_file_opens_without_the_peer_had_all_mark(path: Path) -> None:
    def as_format_2(fields):
        fields["version"] = 2
        del fields["peer_had_all"]  # format 3 added it
    with MetaStore.create(path, SIZE, "node1", disk=DiskState.UP_TO_DATE) as store:
        store.update(peer_had_all=True)
        slot = newest_slot(store)
    rewrite_json(path, slot, as_format_2)
    with MetaStore.open(path) as store:
        assert store.state.disk is DiskState.UP_TO_DATE and store.state.peer_had_all is False


def test_a_newer_format_is_refused_without_falling_back_or_advising_a_recreate(path: Path) -> None:
    with MetaStore.create(path, SIZE, "node1", disk=DiskState.UP_TO_DATE) as store:
        store.update(disk=DiskState.OUTDATED)
        slot = newest_slot(store)  # the other slot still holds an older, valid state
    before = path.read_bytes()
    rewrite_json(path, slot, lambda f: f.update(version=99, some_new_field=1))
    written = path.read_bytes()
    with pytest.raises(MetaError) as info:
        MetaStore.open(path)
    msg = str(info.value)
    assert "format 99" in msg and "newer tandem" in msg and "Do not recreate" in msg
    assert path.read_bytes() == written != before  # nothing touched by the refusal


@pytest.mark.parametrize("version", [0, None, "2", True])
def test_a_slot_with_a_bad_version_counts_as_corrupt(path: Path, version) -> None:
    with MetaStore.create(path, SIZE, "node1") as store:
        store.update(disk=DiskState.OUTDATED)
        slot = newest_slot(store)
    rewrite_json(path, slot, lambda f: f.update(version=version))
    with MetaStore.open(path) as store:  # the other slot: the previous state
        assert store.state.disk is DiskState.INCONSISTENT
