"""Notices, from a thread of its own, that the agent's event loop has stopped running.

Everything the agent does runs on one asyncio loop, the lease loop too. A call
that blocks the loop's thread (a lookup on the replicated filesystem while its
writes are held) freezes all of it, and both the agent's "lease loop stalled"
line and its SIGUSR1 task dump need the loop to run. So this thread logs every
thread's stack once the loop has not run for `stall` seconds: once per stall,
and again when the loop runs again.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("tandem.agent")


class LoopWatch:
    def __init__(self, stall: float = 3.0):
        self.stall = stall
        self._beat = time.monotonic()
        self._stopped = threading.Event()
        self._stuck_since: float | None = None
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)

    async def beat(self) -> None:
        """The loop's side: a task that runs until cancelled."""
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(self.stall / 4)

    def start(self) -> None:
        self._beat = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()  # (a daemon thread: not joined from the loop)

    def _watch(self) -> None:
        period = min(0.5, self.stall / 4)
        woke = baseline = time.monotonic()
        while not self._stopped.wait(period):
            now = time.monotonic()
            if now - woke > period + 1.0:
                baseline = now  # this thread was stopped too (SIGSTOP, a paused VM): not the loop
            woke = now
            silent = now - max(self._beat, baseline)
            if silent < self.stall:
                if self._stuck_since is not None:
                    log.warning("the event loop runs again after %.1f s",
                                time.monotonic() - self._stuck_since)
                    self._stuck_since = None
                continue
            if self._stuck_since is None:
                self._stuck_since = self._beat
                log.error("the event loop has not run for %.1f s (a call blocks its thread);"
                          " every thread's stack:\n%s", silent, stacks())


def stacks() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        out.append(f"thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}")
    return "\n".join(out)
