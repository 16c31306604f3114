"""Range lock: a batch of scattered ranges under one token excludes exactly the
ranges it holds (the resync source holds hundreds at once)."""

from __future__ import annotations

import threading

import pytest

from tandem.volume.rangelock import RangeLock


def test_batch_excludes_its_ranges_and_nothing_between() -> None:
    lock = RangeLock()
    token = lock.acquire_many([(8192, 4096), (0, 4096), (1 << 20, 4096)])
    for off, n in ((0, 1), (4095, 2), (8192, 4096), (12287, 1), (1 << 20, 1)):
        with pytest.raises(TimeoutError):
            lock.acquire(off, n, timeout=0.01)
    for off, n in ((4096, 4096), (12288, 4096), (16384, (1 << 20) - 16384)):
        lock.release(lock.acquire(off, n, timeout=0.01))
    lock.release(token)
    lock.release(lock.acquire(0, 2 << 20, timeout=0.01))
    assert lock.busy() == 0


def test_waiter_proceeds_when_the_batch_is_released() -> None:
    lock = RangeLock()
    token = lock.acquire_many([(0, 4096), (65536, 4096)])
    got = threading.Event()

    def writer() -> None:
        lock.release(lock.acquire(65536 + 100, 10))
        got.set()

    t = threading.Thread(target=writer)
    t.start()
    assert not got.wait(0.05)
    lock.release(token)
    assert got.wait(5)
    t.join()
