"""The backing store's durable write paths keep the data and never hide an error."""

from __future__ import annotations

import errno
import os

import pytest

from tandem.volume.backing import BackingStore, DiskFailed

SIZE = 4 << 20


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "disk.img"
    BackingStore.create(path, SIZE, preallocate=True)
    failures: list[OSError] = []
    s = BackingStore(path, SIZE, on_failure=failures.append)
    s.failures = failures  # type: ignore[attr-defined]
    yield s
    s.close()


@pytest.mark.parametrize(("offset", "length"), [
    (0, 4096), (8192, 65536), (SIZE - 4096, 4096),  # aligned: O_DIRECT
    (100, 4096), (4096, 1000), (12288, 4097),  # unaligned: the buffered path
])
def test_direct_durable_writes_land_like_plain_ones(store, offset, length):
    data = os.urandom(length)
    store.pwrite_durable_direct(offset, memoryview(data))
    assert store.pread(offset, length) == data
    store.pwrite(offset, b"\0" * length, durable=True)  # a buffered write after a direct one
    assert store.pread(offset, length) == b"\0" * length
    with open(store.path, "rb") as f:  # another reader sees it too (no stale cache)
        f.seek(offset)
        assert f.read(length) == b"\0" * length


def test_direct_durable_write_beyond_the_end_and_injected_errors_fail(store):
    with pytest.raises(OSError) as exc:
        store.pwrite_durable_direct(SIZE, b"x" * 4096)
    assert exc.value.errno == errno.EINVAL
    store.inject_errors([(65536, 4096)])
    with pytest.raises(DiskFailed):
        store.pwrite_durable_direct(65536, b"y" * 4096)
    assert store.failed is not None and len(store.failures) == 1
    with pytest.raises(DiskFailed):  # failed once, failed for good
        store.pwrite_durable_direct(0, b"z" * 4096)
