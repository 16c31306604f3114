"""The campaign's API workload: clients deploying, stopping and starting VMs
through the API VIP, as CloudStack users do, while faults come and go.

Each worker owns its VMs (so any overlap of two operations on one VM on the
simulated host is the management tier's fault, not the workload's) and keeps
a record of every job the API accepted: id, command, when. The checker later
asks each job's final status and compares with the simulated host's effect log
(every accepted job applied exactly once).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from tandem.lab.events import monotonic
from tandem.mgmt import signing


class ApiClient:
    """Signed CloudStack API calls (signature version 3), no proxies."""

    def __init__(self, endpoint: str, apikey: str, secret: str, timeout: float = 5.0):
        self.endpoint, self.apikey, self.secret, self.timeout = endpoint, apikey, secret, timeout
        self.session = requests.Session()
        self.session.trust_env = False

    def call(self, command: str, **params: Any) -> dict[str, Any]:
        """The response body's single value; raises on HTTP or connection errors."""
        p = {"command": command, "response": "json", "apiKey": self.apikey, "signatureVersion": "3",
             "expires": (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S%z"),
             **{k: str(v) for k, v in params.items()}}
        p["signature"] = signing.sign(p, self.secret)
        r = self.session.get(self.endpoint, params=p, timeout=self.timeout)
        if r.status_code != 200:
            raise RuntimeError(f"{command}: HTTP {r.status_code}: {r.text[:200]}")
        [value] = r.json().values()
        return value

    def job_status(self, jobid: str) -> dict[str, Any]:
        return self.call("queryAsyncJobResult", jobid=jobid)


class ApiLoad:
    """`workers` threads, each: deploy a VM now and then, stop/start its VMs, list."""

    def __init__(self, client: ApiClient, workers: int = 2, seed: int = 0, pause: float = 0.3,
                 on_death: Callable[[int, str], None] | None = None):
        self.client = client
        #: called with (worker, error) when a worker dies of an error its loop does not
        #: expect: the campaign records it, for "every accepted job completes" holds
        #: vacuously once nobody submits jobs (review 29)
        self.on_death = on_death
        self.workers = workers
        self.seed = seed
        self.pause = pause
        self.jobs: list[dict[str, Any]] = []  # jobid, command, vm, accepted (monotonic)
        self.calls: list[tuple[float, bool]] = []  # (t, ok) of every API call
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.ids: dict[str, str] = {}
        #: when a worker last saw a job succeed (monotonic): the campaign converges only
        #: once one did since healing
        self.last_success = float("-inf")

    def start(self) -> None:
        self.ids = {
            "zoneid": self.client.call("listZones")["zone"][0]["id"],
            "serviceofferingid": self.client.call("listServiceOfferings")["serviceoffering"][0]["id"],
            "templateid": self.client.call("listTemplates", templatefilter="featured")["template"][0]["id"],
        }
        for w in range(self.workers):
            t = threading.Thread(target=self._worker, args=(w,), daemon=True, name=f"apiload-{w}")
            t.start()
            self.threads.append(t)

    def alive(self) -> bool:
        """Some worker still submits jobs."""
        return any(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(60)

    def _call(self, command: str, **params: Any) -> dict[str, Any] | None:
        try:
            out = self.client.call(command, **params)
        except (requests.RequestException, RuntimeError, ValueError):
            with self.lock:
                self.calls.append((monotonic(), False))
            return None
        with self.lock:
            self.calls.append((monotonic(), True))
        return out

    def _submit(self, command: str, vm: str | None, **params: Any) -> str | None:
        out = self._call(command, **params)
        if out is None or "jobid" not in out:
            return None
        with self.lock:
            self.jobs.append({"jobid": out["jobid"], "command": command, "vm": vm or out.get("id"),
                              "accepted": monotonic()})
        return out["jobid"]

    def _saw_done(self, jobid: str, status: int, job: dict[str, Any] | None = None) -> None:
        """Stamp when this client first saw the job finished (`done`, monotonic) and
        how (`seen`, its jobstatus then): the checker wants the host's effect of a
        job that succeeded before it, and the status never to change after it was
        told (review 30: a client told "failed" about an operation that was applied)."""
        t = monotonic()
        with self.lock:
            if job is None:
                job = next((j for j in reversed(self.jobs) if j["jobid"] == jobid), None)
            if job is not None:
                job.setdefault("done", t)
                job.setdefault("seen", status)

    def _wait(self, jobid: str, timeout: float = 30) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_event.is_set():
            res = self._call("queryAsyncJobResult", jobid=jobid)
            if res is not None and res.get("jobstatus") != 0:
                self._saw_done(jobid, res.get("jobstatus"))
                if res.get("jobstatus") == 1:
                    self.last_success = monotonic()
                return res
            time.sleep(0.2)
        return None

    def _worker(self, w: int) -> None:
        try:
            self._work(w)
        except Exception as e:
            if self.on_death is None:
                raise
            self.on_death(w, f"{type(e).__name__}: {e}"[:300])

    def _work(self, w: int) -> None:
        rng = random.Random(f"{self.seed}:api:{w}")
        vms: dict[str, str] = {}  # id -> Running/Stopped, as last reported
        i = 0
        while not self.stop_event.is_set():
            i += 1
            r = rng.random()
            if not vms or (r < 0.25 and len(vms) < 8):
                jobid = self._submit("deployVirtualMachine", None, name=f"t{self.seed}w{w}n{i}", **self.ids)
                res = self._wait(jobid) if jobid else None
                if res and res["jobstatus"] == 1:
                    vm = res["jobresult"]["virtualmachine"]
                    vms[vm["id"]] = vm["state"]
            elif r < 0.75:
                vm = rng.choice(sorted(vms))
                cmd = "stopVirtualMachine" if vms[vm] == "Running" else "startVirtualMachine"
                jobid = self._submit(cmd, vm, id=vm)
                res = self._wait(jobid) if jobid else None
                if res and res["jobstatus"] == 1:
                    vms[vm] = res["jobresult"]["virtualmachine"]["state"]
                elif jobid:
                    vms.pop(vm)  # state unknown now: leave that VM alone
            else:
                self._call("listVirtualMachines")
            self.stop_event.wait(self.pause)

    def final_status(self, timeout: float = 120) -> list[dict[str, Any]]:
        """Every accepted job with its final jobstatus (0 if still pending at `timeout`).

        Past `timeout`, each job is asked at most `TRIES_PAST_DEADLINE` times,
        and after `GIVE_UP_AFTER` jobs in a row without an answer the asking ends:
        the rest count as pending. A campaign that stopped because the cluster
        could not recover has thousands of jobs, and asking a dead API about each
        one took more than 20 minutes (107:77). (One failure alone ended it, and a
        long campaign's thousands of questions outlast `timeout`: one transient
        error, or one job the API cannot answer for, would have left every job not
        asked yet "never completed", review 30.)"""
        deadline = time.monotonic() + timeout
        out = []
        unanswered = 0  # jobs in a row, past the deadline, without an answer
        with self.lock:
            jobs = list(self.jobs)
        for job in jobs:
            status, tries = 0, 0
            while unanswered < GIVE_UP_AFTER:
                try:
                    status = self.client.job_status(job["jobid"])["jobstatus"]
                except (requests.RequestException, RuntimeError, ValueError):
                    if time.monotonic() > deadline:
                        tries += 1
                        if tries >= TRIES_PAST_DEADLINE:
                            unanswered += 1
                            break
                    time.sleep(0.2)
                    continue
                unanswered = 0
                if status != 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if status != 0:
                self._saw_done(job["jobid"], status, job)
            out.append({**job, "status": status})
        return out


GIVE_UP_AFTER = 5
"""Jobs in a row without an answer, past its timeout, after which `final_status` stops asking."""
TRIES_PAST_DEADLINE = 3
"""Questions about one job past `final_status`'s timeout before it counts as unanswered."""
