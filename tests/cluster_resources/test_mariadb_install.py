"""The install's staging directory and its move-up, one at a time: a start cancelled
while its thread still writes out or moves the install (the volume slow, or its
writes held) must not have a retried start put a new staging directory, with a
half-made install in it, under that thread (it would move that one into place)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tandem.cluster.resources import mariadb as m
from tandem.cluster.resources.base import ResourceError


@pytest.fixture
def staged(tmp_path):
    datadir = tmp_path / "data"
    staging = datadir / ".tandem-install"
    assert m._new_staging(datadir, staging, os.getuid(), os.getgid())
    (staging / "mysql").mkdir()
    (staging / "ibdata1").write_bytes(b"first install")
    (staging / m.REDO_LOG).write_bytes(b"")
    return datadir, staging


@pytest.fixture
def held_write_out(monkeypatch):
    entered, release = threading.Event(), threading.Event()

    def slow(path):
        entered.set()
        release.wait(10)
        return 0

    monkeypatch.setattr(m, "write_out_unwritten", slow)
    yield entered, release
    release.set()


def test_a_retried_install_waits_for_the_move_up_of_a_cancelled_one(staged, held_write_out):
    datadir, staging = staged
    entered, release = held_write_out
    mover = threading.Thread(target=m._move_up, args=(staging, datadir))
    mover.start()
    assert entered.wait(5)
    result: list[bool] = []
    retry = threading.Thread(
        target=lambda: result.append(m._new_staging(datadir, staging, os.getuid(), os.getgid())))
    retry.start()
    time.sleep(0.3)
    assert result == [] and (staging / "ibdata1").read_bytes() == b"first install"
    release.set()
    mover.join(5)
    retry.join(5)
    assert result == [False]  # initialised meanwhile: no second install
    assert (datadir / "mysql").is_dir() and (datadir / "ibdata1").read_bytes() == b"first install"
    assert not staging.exists()


def test_a_move_up_that_does_not_end_fails_the_next_install_clearly(staged, held_write_out, monkeypatch):
    datadir, staging = staged
    entered, release = held_write_out
    monkeypatch.setattr(m, "INSTALL_WAIT", 0.2)
    mover = threading.Thread(target=m._move_up, args=(staging, datadir))
    mover.start()
    assert entered.wait(5)
    try:
        with pytest.raises(ResourceError, match="is still moving its files after 0 s"):
            m._new_staging(datadir, staging, os.getuid(), os.getgid())
        assert (staging / "ibdata1").read_bytes() == b"first install"
    finally:
        release.set()
        mover.join(5)
