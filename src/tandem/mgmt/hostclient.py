"""How a management server asks a (simulated) hypervisor host to do something.

Each call carries the job's request id, so repeating it — after a timeout, a
broken connection or a takeover by another management server — can only return
the first result. That makes retrying here always safe, and it is what turns
"at least once" delivery into "exactly once" effects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp


class RequestExpired(Exception):
    """The sender's job lease ran out before the host acted on this attempt.

    `maybe_delivered`: an earlier attempt of the same call may have reached the
    host before it timed out."""

    def __init__(self, message: str, maybe_delivered: bool = False):
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class HostUnavailable(Exception):
    """The host did not answer within the retry budget.

    `maybe_delivered`: some attempt may have reached the host (it timed out or
    broke after sending), so the operation may have happened; False only when
    every attempt was refused before the host could act on it."""

    def __init__(self, message: str, maybe_delivered: bool = True):
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


@dataclass(frozen=True)
class HostResult:
    ok: bool
    state: str | None
    error: str | None
    replayed: bool


class HostClient:
    def __init__(self, base_url: str, *, retry_budget: float = 20.0, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.retry_budget = retry_budget
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def op(self, request_id: str, op: str, vm: str, spec: dict[str, Any] | None = None, *,
                 valid_until: Callable[[], float | None] | None = None) -> HostResult:
        """Apply `op` to `vm` under `request_id`; retry until the host answers.

        `valid_until()`: monotonic time until which the sender may act (its job
        lease); sent as a wall-clock expiry the host enforces. RequestExpired when
        it has run out: the caller must prove it still owns the job first."""
        deadline = time.monotonic() + self.retry_budget
        delay = 0.1
        maybe_delivered = False
        body: dict[str, Any] = {"request_id": request_id, "op": op, "vm": vm, "spec": spec or {}}
        while True:
            try:
                if valid_until is not None:
                    left = (valid_until() or 0.0) - time.monotonic()
                    if left <= 0:
                        raise RequestExpired(f"{op} of {request_id}: our job lease ran out", maybe_delivered)
                    body["expires"] = time.time() + left
                http = await self._http()
                # An attempt never outlives the budget by much: a host that stopped
                # answering (paused, partitioned) costs the budget, not 30 s more.
                left = deadline - time.monotonic()
                attempt = aiohttp.ClientTimeout(total=min(self.timeout, max(1.0, left)))
                async with http.post(f"{self.base_url}/v1/ops", json=body, timeout=attempt) as resp:
                    data = await resp.json()
                if resp.status == 409 and data.get("expired"):
                    raise RequestExpired(f"host refused {op} of {request_id}: our job lease ran out",
                                         maybe_delivered)
                if resp.status == 409 and data.get("busy"):
                    raise _Busy(data.get("error"))
                if resp.status not in (200, 409):
                    raise HostUnavailable(f"host answered HTTP {resp.status}: {data.get('error')}",
                                          maybe_delivered=maybe_delivered or resp.status >= 500)
                return HostResult(ok=bool(data.get("ok")), state=data.get("state"), error=data.get("error"),
                                  replayed=bool(data.get("replayed")))
            except (TimeoutError, aiohttp.ClientError, ValueError, _Busy) as e:
                # Refused before the host could act: no connection, or "busy with
                # another request". Anything else may have happened after sending.
                refused = isinstance(e, _Busy | aiohttp.ClientConnectorError)
                maybe_delivered = maybe_delivered or not refused
                if time.monotonic() + delay > deadline:
                    raise HostUnavailable(f"host {self.base_url} unavailable: {type(e).__name__}",
                                          maybe_delivered) from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


class _Busy(Exception):
    pass
