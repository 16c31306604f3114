"""Dirty bitmap and activity log."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.volume.bitmap import ActivityLog, ActivityLogFull, DirtyBitmap

BS = 4096
SETTINGS = settings(max_examples=120, deadline=None)


@st.composite
def volume_and_ranges(draw: st.DrawFn) -> tuple[int, list[tuple[str, int, int]]]:
    size = draw(st.integers(1, 300)) * BS - draw(st.sampled_from([0, 0, 1, 100, BS - 1]))
    ops = []
    for _ in range(draw(st.integers(0, 12))):
        offset = draw(st.integers(0, size - 1))
        length = draw(st.integers(0, size - offset))
        ops.append((draw(st.sampled_from(["set", "set", "clear"])), offset, length))
    return size, ops


def model(size: int, ops: list[tuple[str, int, int]]) -> set[int]:
    """Reference: a set of dirty block numbers, updated block by block."""
    blocks: set[int] = set()
    nblocks = -(-size // BS)
    for op, offset, length in ops:
        if length == 0:
            continue
        for b in range(offset // BS, (offset + length - 1) // BS + 1):
            start, end = b * BS, min((b + 1) * BS, size)
            covered = offset <= start and offset + length >= end
            if op == "set":
                blocks.add(b)
            elif covered:
                blocks.discard(b)
        assert all(b < nblocks for b in blocks)
    return blocks


def runs_to_blocks(runs: list[tuple[int, int]], size: int) -> set[int]:
    out: set[int] = set()
    for offset, length in runs:
        assert offset % BS == 0 and length > 0 and offset + length <= size
        out.update(range(offset // BS, -(-(offset + length) // BS)))
    return out


@SETTINGS
@given(volume_and_ranges(), st.sampled_from([None, BS, 3 * BS, 5 * BS + 7]))
def test_runs_cover_exactly_the_dirty_blocks(case, max_length) -> None:
    size, ops = case
    bm = DirtyBitmap(size)
    for op, offset, length in ops:
        (bm.set_range if op == "set" else bm.clear_range)(offset, length)
    expected = model(size, ops)
    runs = list(bm.dirty_runs(max_length))
    assert runs_to_blocks(runs, size) == expected
    assert bm.weight == len(expected)
    assert sum(length for _, length in runs) == bm.dirty_bytes
    for (o1, l1), (o2, _) in zip(runs, runs[1:], strict=False):
        assert o1 + l1 <= o2  # ordered, no overlap
        if max_length is None:
            assert o1 + l1 < o2  # maximal runs: adjacent ones are merged
    if max_length is not None:
        assert all(length <= max(BS, max_length) for _, length in runs)
    for b in range(-(-size // BS)):
        assert bm.test(b) == (b in expected)


@SETTINGS
@given(volume_and_ranges())
def test_serialisation_round_trip(case) -> None:
    size, ops = case
    bm = DirtyBitmap(size)
    for op, offset, length in ops:
        (bm.set_range if op == "set" else bm.clear_range)(offset, length)
    back = DirtyBitmap.from_bytes(bm.to_bytes(), size)
    assert back == bm and back.weight == bm.weight
    raw = DirtyBitmap(size)
    raw.load_raw(bm.raw)
    assert raw == bm


@SETTINGS
@given(volume_and_ranges(), volume_and_ranges())
def test_union_and_chunks(case1, case2) -> None:
    size, ops1 = case1
    _, ops2 = case2
    ops2 = [(op, o % size, min(n, size - o % size)) for op, o, n in ops2]
    a, b = DirtyBitmap(size), DirtyBitmap(size)
    for bm, ops in ((a, ops1), (b, ops2)):
        for op, offset, length in ops:
            (bm.set_range if op == "set" else bm.clear_range)(offset, length)
    expected = model(size, ops1) | model(size, ops2)
    via_chunks = DirtyBitmap(size)
    via_chunks.union(a)
    for offset, piece in b.chunks(chunk_size=3):
        via_chunks.or_bytes(offset, piece)
    a.union(b)
    assert runs_to_blocks(list(a.dirty_runs()), size) == expected
    assert a == via_chunks and a.weight == len(expected)


def test_partial_clear_keeps_the_block_dirty() -> None:
    bm = DirtyBitmap(10 * BS)
    bm.set_range(BS + 10, 1)
    assert list(bm.dirty_runs()) == [(BS, BS)]
    assert bm.clear_range(BS, BS - 1) == 0
    assert bm.weight == 1
    assert bm.clear_range(BS, BS) == 1
    assert bm.weight == 0 and list(bm.dirty_runs()) == []


def test_short_last_block() -> None:
    bm = DirtyBitmap(3 * BS + 100)
    bm.set_range(3 * BS + 50, 50)
    assert list(bm.dirty_runs()) == [(3 * BS, 100)]
    assert bm.dirty_bytes == 100
    bm.clear_range(3 * BS, 100)
    assert bm.weight == 0


def test_out_of_range_and_bad_input() -> None:
    bm = DirtyBitmap(4 * BS)
    with pytest.raises(ValueError):
        bm.set_range(3 * BS, BS + 1)
    with pytest.raises(ValueError):
        DirtyBitmap.from_bytes(bm.to_bytes(), 8 * BS)  # other geometry
    with pytest.raises(ValueError):
        DirtyBitmap.from_bytes(bm.to_bytes()[:-3], 4 * BS)
    with pytest.raises(ValueError):
        bm.load_raw(b"\xff")  # bits beyond the 4-block volume
    with pytest.raises(ValueError):
        bm.or_bytes(1, b"\x00")


def test_ten_gib_volume_is_fast_and_compact() -> None:
    size = 10 << 30
    bm = DirtyBitmap(size)
    assert len(bm.raw) == 320 << 10
    t0 = time.perf_counter()
    bm.set_range(0, 64 << 20)  # a big run
    for i in range(2000):  # scattered small writes
        bm.set_range((i * 5_242_877) % (size - BS), 512)
    runs = list(bm.dirty_runs(max_length=1 << 20))
    ser = bm.to_bytes()
    back = DirtyBitmap.from_bytes(ser, size)
    elapsed = time.perf_counter() - t0
    assert back == bm
    assert sum(n for _, n in runs) == bm.weight * BS
    assert len(ser) < 32 << 10
    assert len(DirtyBitmap(size).to_bytes()) < 2048  # 320 KiB of zeros
    assert elapsed < 2.0, elapsed
    bm.set_all()
    assert bm.weight == bm.nbits and list(bm.dirty_runs()) == [(0, size)]
    bm.clear_all()
    assert bm.weight == 0


# --- activity log --------------------------------------------------------------

EXT = 4 << 20


def test_touch_reports_new_extents_only() -> None:
    al = ActivityLog(slots=3)
    assert al.touch(0, 4096) == [0]
    assert al.touch(100, 4096) == []  # same extent: nothing to persist
    assert al.touch(EXT - 10, 20) == [1]  # crosses into extent 1
    assert al.extents() == (0, 1)


def test_lru_eviction_skips_pinned_extents() -> None:
    al = ActivityLog(slots=2)
    al.touch(0, 1)  # extent 0 pinned
    al.touch(EXT, 1)  # extent 1 pinned
    with pytest.raises(ActivityLogFull):
        al.touch(2 * EXT, 1)
    assert al.extents() == (0, 1)  # a refused touch changes nothing
    al.complete(EXT, 1)  # extent 1 idle, extent 0 still in flight
    assert al.touch(2 * EXT, 1) == [2]
    assert al.extents() == (0, 2)  # 1 was evicted although 0 is older
    al.complete(0, 1)
    al.touch(0, 1)  # refresh 0: now 2 is least recently used
    al.complete(0, 1)
    al.complete(2 * EXT, 1)
    al.touch(3 * EXT, 1)
    assert al.extents() == (0, 3)


def test_ranges_for_crash_recovery() -> None:
    al = ActivityLog(slots=4, extents=(5, 1))
    size = 5 * EXT + 100
    assert al.ranges(size) == [(EXT, EXT), (5 * EXT, 100)]
    bm = DirtyBitmap(size)
    for offset, length in al.ranges(size):
        bm.set_range(offset, length)
    assert bm.weight == EXT // BS + 1


def test_completion_without_touch_is_a_bug() -> None:
    al = ActivityLog(slots=2)
    with pytest.raises(ValueError):
        al.complete(0, 1)
    with pytest.raises(ValueError):
        al.touch(0, 3 * EXT)  # spans more extents than slots


def test_victims_names_what_touch_evicts() -> None:
    x = EXT
    al = ActivityLog(slots=2)
    assert al.victims(0, 1) == []  # free slots: nothing leaves
    al.touch(0, 1)
    al.touch(x, 1)
    assert al.victims(0, 1) == []  # already logged
    with pytest.raises(ActivityLogFull):  # both pinned ...
        al.victims(2 * x, 1)
    al.complete(0, 1)
    al.complete(x, 1)
    assert al.victims(2 * x, 1) == [0]  # ... the least recently used goes first
    assert al.victims(2 * x - 1, 2) == [0]  # a write over extents 1 and 2 keeps 1
    assert al.victims(2 * x, 1) == [0]  # asking does not evict
    al.touch(2 * x, 1)
    assert al.extents() == (1, 2)


def test_touch_hot_pins_exactly_like_touch() -> None:
    """The fast path of a write into a logged extent: same pins, same LRU order as
    touch(); anything else (new extent, two extents, bad range) is left to touch()."""
    import random

    rnd = random.Random(7)
    ext = 4096 * 4
    fast, slow = ActivityLog(4, ext), ActivityLog(4, ext)
    inflight: list[tuple[int, int]] = []
    for _ in range(3000):
        if inflight and (rnd.random() < 0.45 or len(inflight) > 3):
            off, n = inflight.pop(rnd.randrange(len(inflight)))
            fast.complete(off, n)
            slow.complete(off, n)
            continue
        off = rnd.randrange(0, 12 * ext, 512)
        n = rnd.choice([512, 4096, ext, ext + 4096])
        try:
            victims = slow.victims(off, n)
        except ActivityLogFull:
            continue
        assert fast.victims(off, n) == victims
        hot = fast.touch_hot(off, n)
        if hot:
            assert victims == [] and off // ext == (off + n - 1) // ext
        else:
            fast.touch(off, n)
        slow.touch(off, n)
        inflight.append((off, n))
        assert fast.extents() == slow.extents()
        assert fast._lru == slow._lru
    assert not ActivityLog(4, ext).touch_hot(0, 4096)  # not in the log: touch() adds it
    al = ActivityLog(4, ext, (0,))
    assert not al.touch_hot(ext - 512, 1024)  # spans two extents
    assert not al.touch_hot(0, 0) and al.in_flight() == 0
