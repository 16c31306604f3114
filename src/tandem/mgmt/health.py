"""One database probe at a time for ``/health``, whoever asks.

Why: every haproxy checks every management server twice a second, and an
operator or the lab's campaign asks too. A probe opens a new database
connection; while the database VIP is moving it takes its whole connect
timeout. One thread per request then queued more probes than the executor
could run, each request waited behind the whole queue, haproxy's 1 s check
timed out, and the backlog kept itself alive long after the database was back
(seen in the lab: the API VIP's ``/health`` timed out for over two minutes
under load while API calls worked). Now concurrent requests share the probe in
flight: at most one per server, and every answer is from a probe that ended
after the request came in or was still running then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class SharedProbe:
    """Coalesces callers of an async `probe` (a bool: healthy or not)."""

    def __init__(self, probe: Callable[[], Awaitable[bool]]):
        self._probe = probe
        self._inflight: asyncio.Task[bool] | None = None
        self.probes = 0  #: probes started (callers beyond this count shared one)

    async def check(self) -> bool:
        if self._inflight is None:
            self.probes += 1
            self._inflight = asyncio.ensure_future(self._run())
        # A caller that gives up must not cancel the probe the others wait for.
        return await asyncio.shield(self._inflight)

    async def _run(self) -> bool:
        try:
            return bool(await self._probe())
        except Exception:  # noqa: BLE001 - a probe that breaks means "not healthy"
            return False
        finally:
            self._inflight = None
