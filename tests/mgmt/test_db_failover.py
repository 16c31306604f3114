"""The database goes away under API load (a graceful stop, then a SIGKILL) and
comes back on the same address, as after a failover to the DB VIP: clients see
latency, not errors, and no job is lost or applied twice."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest
import requests

from tests.mgmt.conftest import Api, MariaDB, MgmtProc, SimHostProc, create_admin, private_mariadb

ZONE = "6c2b9a4e-0000-4000-8000-000000000001"
SMALL = "5b7f0c1e-0000-4000-8000-000000000001"
TEMPLATE = "7e4d2a9c-0000-4000-8000-000000000001"


@pytest.fixture
def own_mariadb():
    with private_mariadb("tandem-mariadb-failover-") as db:
        yield db


def test_requests_and_jobs_ride_out_database_restarts(own_mariadb: MariaDB, procs):
    database = own_mariadb.create_database()
    host = SimHostProc(procs, op_seconds=0.1)
    # The bound is generous here: a loaded test machine may take seconds to restart mariadbd.
    server = MgmtProc(procs, own_mariadb, database, host, "mgmt-f", db_retry=30)
    admin = create_admin(procs, own_mariadb, database)
    api = Api(server.endpoint, admin["apikey"], admin["secretkey"])

    failures: list[str] = []
    jobs: list[str] = []
    latencies: list[float] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.monotonic()
            try:
                if i % 4 == 0:
                    r = api.raw("deployVirtualMachine", zoneid=ZONE, serviceofferingid=SMALL,
                                templateid=TEMPLATE, name=f"w{worker}-{i}")
                    if r.status_code == 200:
                        jobs.append(r.json()["deployvirtualmachineresponse"]["jobid"])
                else:
                    r = api.raw("listVirtualMachines" if i % 2 else "listZones")
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
            except requests.RequestException as e:
                failures.append(repr(e))
            latencies.append(time.monotonic() - t0)
            time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    health_down = []
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            time.sleep(1.0)
            own_mariadb.stop(sig)
            health_down.append(requests.get(server.base + "/health", timeout=5).status_code)
            time.sleep(1.5)
            own_mariadb.start()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    assert health_down == [503, 503]
    assert max(latencies) > 1.0  # requests really waited through the outages
    assert requests.get(server.base + "/health", timeout=5).status_code == 200
    assert len(jobs) >= 3  # (how many depends on the machine: each waits through the outages)
    results = [api.wait_job(j, timeout=60) for j in jobs]
    assert [r["jobstatus"] for r in results] == [1] * len(jobs)
    effects = Counter(e["request_id"] for e in host.effects())
    assert all(effects[j] == 1 for j in jobs) and sum(effects.values()) == len(jobs)
