"""Fixtures for the raw FUSE server tests: real kernel, real mounts, root only.

Everything a test creates lives in a temp dir under /var/tmp and is torn down in
fixtures (mount, server threads, backing file), also when the test fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tandem.volume.fuse_raw import FileBackend, FuseServer
from tandem.volume.fuse_sys import mounted_fs_type, umount

SIZE = 64 << 20

if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
    pytest.skip("needs root and /dev/fuse", allow_module_level=True)


@pytest.fixture
def workdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="tandem-fuse-test-", dir="/var/tmp")
    try:
        yield d
    finally:
        for sub in ("ext4", "mnt"):  # last resort: never leave our mounts behind
            mp = os.path.join(d, sub)
            while os.path.isdir(mp) and mounted_fs_type(mp):
                try:
                    umount(mp, lazy=True)
                except OSError:
                    break
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mnt(workdir: str) -> str:
    path = os.path.join(workdir, "mnt")
    os.mkdir(path)
    return path


@pytest.fixture
def backing(workdir: str) -> str:
    return os.path.join(workdir, "backing.img")


@pytest.fixture
def server(backing: str, mnt: str) -> Iterator[FuseServer]:
    backend = FileBackend(backing, SIZE)
    srv = FuseServer(backend, mnt, threads=4)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        backend.close()
