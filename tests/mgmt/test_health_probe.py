"""`/health` runs one database probe at a time per server, however many ask."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest
import requests

from tandem.mgmt.health import SharedProbe
from tests.mgmt.conftest import Procs, SimHostProc, _http_ok, create_admin, free_port, wait_for
from tests.mgmt.tcpproxy import TcpProxy


class CountingProbe:
    def __init__(self, result: bool = True, seconds: float = 0.2, fail: bool = False):
        self.calls, self.result, self.seconds, self.fail = 0, result, seconds, fail

    async def __call__(self) -> bool:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise OSError("probe broke")
        return self.result


def test_concurrent_callers_share_one_probe_and_later_ones_start_another():
    async def go():
        probe = CountingProbe(result=False)
        shared = SharedProbe(probe)
        got = await asyncio.gather(*(shared.check() for _ in range(50)))
        assert got == [False] * 50 and probe.calls == 1 == shared.probes
        probe.result = True
        assert await shared.check() is True and probe.calls == 2  # a finished probe is not reused
    asyncio.run(go())


def test_a_caller_that_gives_up_does_not_cancel_the_probe_of_the_others():
    async def go():
        probe = CountingProbe(seconds=0.3)
        shared = SharedProbe(probe)
        impatient = asyncio.ensure_future(asyncio.wait_for(shared.check(), 0.05))
        patient = asyncio.ensure_future(shared.check())
        with pytest.raises(asyncio.TimeoutError):
            await impatient
        assert await patient is True and probe.calls == 1
    asyncio.run(go())


def test_a_probe_that_raises_is_unhealthy_and_the_next_one_runs():
    async def go():
        probe = CountingProbe(fail=True, seconds=0)
        shared = SharedProbe(probe)
        assert await shared.check() is False
        probe.fail = False
        assert await shared.check() is True and probe.calls == 2
    asyncio.run(go())


class HoldingProxy(TcpProxy):
    """In hold mode it accepts connections and never answers (a database that hangs)."""

    hold = False

    def accept_hook(self, client) -> bool:
        return not self.hold


def test_a_hanging_database_gets_one_probe_per_server_not_one_per_request(procs: Procs, mariadb, database):
    proxy = HoldingProxy(mariadb.port)
    try:
        simhost = SimHostProc(procs)
        create_admin(procs, mariadb, database)
        port = free_port()
        url = mariadb.url(database).replace(f":{mariadb.port}/", f":{proxy.port}/")
        procs.spawn("mgmt1", ["serve", "--db", url, "--listen", f"127.0.0.1:{port}", "--server-id", "mgmt1",
                              "--simhost", simhost.url], env={"TANDEM_DB_PASSWORD": mariadb.password})
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _http_ok(base + "/health"), 30, "management server")
        proxy.hold = True
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            codes = list(pool.map(lambda _: requests.get(base + "/health", timeout=30).status_code,
                                  range(30)))
        assert codes == [503] * 30
        # Each probe is one connection; one per request queued 30 of them behind 6 threads.
        assert len(proxy.held) <= 5, f"{len(proxy.held)} probes for 30 concurrent requests"
        proxy.hold = False
        wait_for(lambda: _http_ok(base + "/health"), 30, "healthy again")
    finally:
        procs.stop_all()
        proxy.close()
