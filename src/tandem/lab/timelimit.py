"""A hard upper bound on a step of a long lab run, for calls we cannot give a timeout.

A fault campaign drives dozens of helpers (status reads, process starts, etcd member
changes, subprocesses): almost all have their own timeouts, but one that had none
held a campaign in `repair` for 2.5 hours (torture 56/57), and its final checks
never ran. SIGALRM interrupts whatever blocking call the main thread is in, and
the exception says where it was, so the campaign ends with a finding instead of
hanging.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Iterator


class Overran(Exception):
    """A step took longer than its limit; the message says where it was stuck."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`Overran` in the main thread after `seconds`. Elsewhere (a
    worker thread cannot take signals) the block runs unbounded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(_signum: int, frame) -> None:
        where = "".join(traceback.format_stack(frame, limit=6)).strip().replace("\n", " | ")
        raise Overran(f"{what} took longer than {seconds:g} s; stuck in: {where[-1200:]}")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
