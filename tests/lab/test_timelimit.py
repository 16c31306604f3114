"""The campaign's last-resort bound interrupts a call that has no timeout of its own."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from tandem.lab.timelimit import Overran, time_limit


def _wait_forever_on_a_pipe() -> None:
    r, w = os.pipe()
    try:
        select.select([r], [], [])  # no timeout: what held campaigns 56/57 for hours
    finally:
        os.close(r)
        os.close(w)


def test_a_blocked_call_is_interrupted_and_says_where() -> None:
    t0 = time.monotonic()
    with pytest.raises(Overran) as err, time_limit(0.3, "repair"):
        _wait_forever_on_a_pipe()
    assert time.monotonic() - t0 < 5
    assert "repair took longer than 0.3 s" in str(err.value)
    assert "_wait_forever_on_a_pipe" in str(err.value)


def test_a_child_process_is_not_left_behind() -> None:
    with pytest.raises(Overran), time_limit(0.3, "a command"):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            proc.wait()
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None


def test_the_previous_handler_and_timer_come_back() -> None:
    before = signal.getsignal(signal.SIGALRM)
    with time_limit(5, "quick"):
        pass
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_outside_the_main_thread_it_does_not_interfere() -> None:
    done = []

    def work() -> None:
        with time_limit(0.01, "in a thread"):
            time.sleep(0.1)
        done.append(True)

    t = threading.Thread(target=work)
    t.start()
    t.join(5)
    assert done == [True]
