"""`tandem bench mgmt`: the management API through haproxy and the API VIP in
the lab (issue 6 benchmark).

Two questions, one lab run:

* **Throughput with one vs two management servers.** Both servers run all
  along (the agents' clones); "one server" is the VIP holder's haproxy with the
  second server put into maintenance over its stats socket, so the only
  difference between the two columns is how many servers haproxy uses. Slices
  are interleaved one, two, two, one, ... so both columns see the same
  background load of this shared machine. List calls (listVirtualMachines
  with a page size, listZones) are measured first, then deploy jobs (accepted
  during the slice, completed/s from the jobs' own created/completed times in
  the database).
* **Faults under API load.** Workers keep calling the API through the VIP while
  the database switches over, and then while the new DB primary is crashed
  (power cut of the node: its management server and haproxy die with it; the
  API VIP is kept on the other node, so the fault is the database's). Every
  request is counted; a failed request is "within the bound" when it failed
  sooner than the servers' database retry budget (those are the ones the
  design promises never to happen). Every job the clients got an id for is
  followed to its end and checked against the simulated host's effect log:
  lost (not finished, or no effect) and duplicated (an effect applied twice).

A benchmark, not a test: it asserts nothing, it reports.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tandem.errors import LabError, TandemError
from tandem.lab.lab import Lab
from tandem.mgmt import signing

ZONE = "6c2b9a4e-0000-4000-8000-000000000001"
SMALL = "5b7f0c1e-0000-4000-8000-000000000001"
TEMPLATE = "7e4d2a9c-0000-4000-8000-000000000001"
BACKEND = "haproxy-servers"  #: the clone haproxy's backend (resource name "haproxy")

Say = Callable[[str], None]


@dataclass
class MgmtBenchOptions:
    lab: str = "hmbench"
    seconds: float = 8.0  #: length of one throughput slice
    rounds: int = 2  #: slice pairs per measurement (ABBA order)
    list_workers: int = 6
    deploy_workers: int = 4
    load_workers: int = 3  #: API clients during the fault parts
    op_seconds: float = 0.2  #: simulated host operation time
    db_retry: float = 10.0  #: the servers' database retry budget (the bound)
    settle: float = 3.0  #: seconds of load before and after each fault
    keep: bool = False
    parts: tuple[str, ...] = ("list", "deploy", "faults")


PARTS = ("list", "deploy", "faults")


# --------------------------------------------------------------------------- client
class Client:
    """Signed CloudStack calls (signatureVersion 3), one connection per request
    like most CloudStack clients; proxies from the environment are ignored."""

    def __init__(self, endpoint: str, apikey: str, secret: str, timeout: float = 120):
        self.endpoint, self.apikey, self.secret, self.timeout = endpoint, apikey, secret, timeout
        self._open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open

    def call(self, command: str, **params: str) -> tuple[int, dict[str, Any] | None, str]:
        """(HTTP status or 0 for no answer, the body's single value, error text)."""
        expires = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(time.time() + 600))
        p = {"command": command, "response": "json", "apiKey": self.apikey, "signatureVersion": "3",
             "expires": expires, **params}
        p["signature"] = signing.sign(p, self.secret)
        url = f"{self.endpoint}?{urllib.parse.urlencode(p)}"
        try:
            with self._open(url, timeout=self.timeout) as r:
                body = json.loads(r.read())
                return r.status, next(iter(body.values())), ""
        except urllib.error.HTTPError as e:
            return e.code, None, e.read()[:200].decode(errors="replace")
        except (OSError, ValueError) as e:
            return 0, None, repr(e)[:200]


# --------------------------------------------------------------------------- haproxy control
def haproxy_ask(lab: Lab, node: str, command: str) -> str:
    """One command on `node`'s clone haproxy stats socket (a file on its run dir)."""
    path = lab.host_dir(node) / "run" / "clones" / "haproxy" / "stats.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode(errors="replace")


def use_servers(lab: Lab, holder: str, servers: list[str], all_servers: list[str]) -> None:
    """Let the VIP holder's haproxy send requests only to `servers`."""
    for name in all_servers:
        state = "ready" if name in servers else "maint"
        for sv in (name, f"{name}-any"):
            out = haproxy_ask(lab, holder, f"set server {BACKEND}/{sv} state {state}")
            if out.strip():
                raise LabError(f"haproxy on {holder}: set server {sv} {state}: {out.strip()}")


# --------------------------------------------------------------------------- measurements
def run_workers(n: int, seconds: float, body: Callable[[int, threading.Event], None]) -> float:
    stop = threading.Event()
    threads = [threading.Thread(target=body, args=(w, stop), daemon=True) for w in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(150)
    return time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def list_slice(api: Client, workers: int, seconds: float) -> dict[str, Any]:
    ok, failed = Counter(), Counter()

    def body(w: int, stop: threading.Event) -> None:
        i = w
        while not stop.is_set():
            i += 1
            cmd = "listVirtualMachines" if i % 2 else "listZones"
            status, _, _ = api.call(cmd, pagesize="20", page="1") if cmd == "listVirtualMachines" \
                else api.call(cmd)
            (ok if status == 200 else failed)[cmd] += 1

    elapsed = run_workers(workers, seconds, body)
    return {"calls": sum(ok.values()), "failed": sum(failed.values()), "seconds": elapsed,
            "calls_per_s": sum(ok.values()) / elapsed}


class Bench:
    def __init__(self, opts: MgmtBenchOptions, say: Say):
        self.opts = opts
        self.say = say
        self.lab: Lab | None = None
        self.stack = None
        self.res: dict[str, Any] = {"options": asdict(opts), "errors": []}

    # --- helpers ---------------------------------------------------------------------
    @property
    def api(self) -> Client:
        a = self.stack.admin
        return Client(self.stack.endpoint, a["apikey"], a["secretkey"])

    def max_seq(self) -> int:
        return int(self.stack.query_cloud("SELECT COALESCE(MAX(seq), 0) FROM async_job")[0][0])

    def wait_jobs(self, after_seq: int, timeout: float = 180) -> list[tuple]:
        """Rows (id, status, ms from first created to last completed) of jobs after `after_seq`,
        once none is pending (or at the timeout)."""
        def pending() -> bool:
            rows = self.stack.query_cloud("SELECT COUNT(*) FROM async_job WHERE seq > %s AND status = 0",
                                          str(after_seq))
            return int(rows[0][0]) == 0
        try:
            self.stack.wait(pending, timeout, "the jobs to finish", interval=0.5)
        except LabError as e:
            self.res["errors"].append(str(e))
        return self.stack.query_cloud("SELECT id, status FROM async_job WHERE seq > %s", str(after_seq))

    def deploy_slice(self, api: Client, workers: int, seconds: float) -> dict[str, Any]:
        before = self.max_seq()
        accepted: list[str] = []
        failed = Counter()

        def body(w: int, stop: threading.Event) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                status, val, _ = api.call("deployVirtualMachine", zoneid=ZONE, serviceofferingid=SMALL,
                                          templateid=TEMPLATE, name=f"b{w}-{i}-{time.monotonic_ns()}")
                if status == 200 and val:
                    accepted.append(val["jobid"])
                else:
                    failed[status] += 1

        elapsed = run_workers(workers, seconds, body)
        self.wait_jobs(before)
        span = self.stack.query_cloud(
            "SELECT COUNT(*), SUM(status = 1), TIMESTAMPDIFF(MICROSECOND, MIN(created), MAX(completed))"
            " FROM async_job WHERE seq > %s", str(before))[0]
        done, ok, us = int(span[0]), int(span[1] or 0), int(span[2] or 0)
        return {"accepted": len(accepted), "failed_requests": sum(failed.values()), "jobs": done,
                "succeeded": ok, "submit_seconds": elapsed, "span_seconds": us / 1e6,
                "accepted_per_s": len(accepted) / elapsed,
                "completed_per_s": ok / (us / 1e6) if us else 0.0}

    # --- parts -----------------------------------------------------------------------
    def throughput(self, kind: str) -> dict[str, Any]:
        o = self.opts
        holder = self.vip_holder()
        servers = ["node1", "node2"]
        order = []
        for _ in range(o.rounds):
            order += [1, 2, 2, 1]
        slices: dict[int, list[dict]] = {1: [], 2: []}
        api = self.api
        pids = [int(self.stack.mgmt_state(s)["pid"]) for s in servers]
        try:
            for n in order:
                use_servers(self.lab, holder, servers[:1] if n == 1 else servers, servers)
                cpu0, own0, t0 = [cpu_seconds(p) for p in pids], os.times(), time.monotonic()
                row = (list_slice(api, o.list_workers, o.seconds) if kind == "list"
                       else self.deploy_slice(api, o.deploy_workers, o.seconds))
                wall = time.monotonic() - t0
                own = os.times()
                row["server_cpu"] = [round((cpu_seconds(p) - c) / wall, 3) for p, c in zip(pids, cpu0,
                                                                                            strict=True)]
                row["client_cpu"] = round((own.user + own.system - own0.user - own0.system) / wall, 3)
                row["load1"] = os.getloadavg()[0]
                slices[n].append(row)
                rate = row["calls_per_s"] if kind == "list" else row["completed_per_s"]
                self.say(f"{kind}: {n} server(s): {rate:.1f}/s")
        finally:
            use_servers(self.lab, holder, servers, servers)
        out: dict[str, Any] = {"holder": holder, "slices": slices}
        for n in (1, 2):
            rows = slices[n]
            if kind == "list":
                calls = sum(r["calls"] for r in rows)
                secs = sum(r["seconds"] for r in rows)
                out[str(n)] = {"per_s": calls / secs, "calls": calls,
                               "failed": sum(r["failed"] for r in rows)}
            else:
                ok = sum(r["succeeded"] for r in rows)
                span = sum(r["span_seconds"] for r in rows)
                out[str(n)] = {"per_s": ok / span if span else 0.0, "jobs": ok,
                               "accepted_per_s": sum(r["accepted"] for r in rows)
                               / sum(r["submit_seconds"] for r in rows),
                               "failed": sum(r["failed_requests"] for r in rows)
                               + sum(r["jobs"] - r["succeeded"] for r in rows)}
            out[str(n)]["server_cpu"] = [round(sum(r["server_cpu"][i] for r in rows) / len(rows), 2)
                                         for i in range(len(servers))]
            out[str(n)]["client_cpu"] = round(sum(r["client_cpu"] for r in rows) / len(rows), 2)
            out[str(n)]["load1"] = round(sum(r["load1"] for r in rows) / len(rows), 1)
        return out

    def wait_eligible(self, node: str) -> None:
        """A switchover is refused to a node that is not eligible (resyncing, or briefly
        unhealthy on a loaded machine): wait for it, not to measure a refusal."""
        def eligible() -> bool:
            return next(n for n in self.stack.status()["nodes"] if n["node"] == node)["eligible"]
        self.stack.wait(eligible, 180, f"{node} to be eligible")

    def vip_holder(self) -> str:
        holders = self.stack.api_vip_holders()
        if len(holders) != 1:
            raise LabError(f"the API VIP is on {holders or 'no node'}")
        return holders[0]

    def faults(self) -> dict[str, Any]:
        """Switchover, then a crash of the new DB primary, under API load."""
        o, st = self.opts, self.stack
        holder = self.vip_holder()
        other = "node2" if holder == "node1" else "node1"
        lead = st.wait_service(60)
        if lead != holder:  # so the measured switchover goes to the node the crash will hit
            self.say(f"unmeasured switchover {lead} -> {holder} (the crash must spare the API VIP)")
            self.wait_eligible(holder)
            st.tandem("witness", "switchover", "--to", holder, "--force", timeout=60)
            st.wait(lambda: st.wait_service(60) == holder, 60, f"the database on {holder}")
        self.wait_eligible(other)
        before = self.max_seq()
        api = self.api
        phase = ["warmup"]
        records: list[dict[str, Any]] = []
        accepted: list[str] = []

        def body(w: int, stop: threading.Event) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                ph, t0 = phase[0], time.monotonic()
                if i % 5 == 0:
                    cmd = "deployVirtualMachine"
                    status, val, err = api.call(cmd, zoneid=ZONE, serviceofferingid=SMALL,
                                                templateid=TEMPLATE, name=f"f{w}-{i}")
                    if status == 200 and val:
                        accepted.append(val["jobid"])
                else:
                    cmd = "listVirtualMachines"
                    status, val, err = api.call(cmd, pagesize="20", page="1")
                records.append({"phase": ph, "cmd": cmd, "status": status, "wait": time.monotonic() - t0,
                                "error": err})
                time.sleep(0.02)

        stop = threading.Event()
        threads = [threading.Thread(target=body, args=(w, stop), daemon=True) for w in range(o.load_workers)]
        for t in threads:
            t.start()
        timing: dict[str, float] = {}
        try:
            time.sleep(o.settle)
            phase[0] = "switchover"
            t0 = time.monotonic()
            self.say(f"switchover {holder} -> {other} under API load")
            st.tandem("witness", "switchover", "--to", other, "--force", timeout=60)
            st.wait(lambda: st.wait_service(60) == other, 60, f"the database on {other}")
            timing["switchover_s"] = time.monotonic() - t0
            time.sleep(o.settle)
            phase[0] = "crash"
            self.say(f"crash of the DB primary {other} (API VIP stays on {holder})")
            t0 = time.monotonic()
            self.lab.faults.crash(other)
            st.wait(lambda: st.wait_service(60) == holder, 90, f"the database back on {holder}")
            timing["crash_service_s"] = time.monotonic() - t0
            time.sleep(o.settle)
        finally:
            stop.set()
            for t in threads:
                t.join(150)
        rows = self.wait_jobs(before)
        effects = Counter(e["request_id"] for e in st.effects())
        status = dict((r[0], int(r[1])) for r in rows)
        acc = set(accepted)
        lost = [j for j in acc if status.get(j) != 1 or effects[j] == 0]
        dup = [j for j in status if effects[j] > 1]
        out: dict[str, Any] = {"timing": timing, "vip_holder": holder, "crashed": other,
                               "jobs_accepted": len(acc), "jobs_lost": len(lost), "jobs_duplicated": len(dup),
                               "jobs_unanswered": len(set(status) - acc),
                               "vip_holder_after": st.api_vip_holders()}
        for ph in ("switchover", "crash"):
            recs = [r for r in records if r["phase"] == ph]
            bad = [r for r in recs if r["status"] != 200]
            out[ph] = {"requests": len(recs), "failed": len(bad),
                       "failed_within_bound": sum(1 for r in bad if r["wait"] < o.db_retry),
                       "max_wait_s": max((r["wait"] for r in recs), default=0.0),
                       "failures": [f"{r['cmd']} {r['status']} after {r['wait']:.1f} s {r['error'][:80]}"
                                    for r in bad[:5]]}
        self.say(f"faults: {out}")
        self.say(f"restarting {other}")
        st.restart_host(other)
        return out

    # --- the run ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from tandem.lab.mgmtstack import MgmtStack
        o = self.opts
        if os.geteuid() != 0:
            raise LabError("the benchmark builds a lab of network namespaces: run it as root")
        Lab.down_by_name(o.lab)
        t_start = time.monotonic()
        self.lab = Lab.up(o.lab)
        self.res["lab"] = {"name": o.lab}
        try:
            self.say("starting the stack: etcd x3, volume, agents with the DB group, management server and"
                     " haproxy clones on node1 and node2, simulated host on the witness")
            self.stack = MgmtStack(self.lab, op_seconds=o.op_seconds, dead_after=2.0, db_retry=o.db_retry)
            t0 = time.monotonic()
            self.stack.start()
            self.res["stack_start_s"] = time.monotonic() - t0
            for part, fn in (("list", lambda: self.throughput("list")),
                             ("deploy", lambda: self.throughput("deploy")), ("faults", self.faults)):
                if part not in o.parts:
                    continue
                try:
                    self.res[part] = fn()
                except (TandemError, OSError) as e:
                    self.res["errors"].append(f"{part}: {e}")
                    self.say(f"{part}: FAILED: {e}")
            self.stack.stop()
        finally:
            if not o.keep:
                self.say(f"tearing down lab {o.lab}")
                Lab.down_by_name(o.lab)
        self.res["seconds"] = time.monotonic() - t_start
        return self.res


def run(opts: MgmtBenchOptions, say: Say) -> dict[str, Any]:
    return Bench(opts, say).run()


# --------------------------------------------------------------------------- output
def render(res: dict[str, Any], command: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="management API through haproxy + API VIP: one vs two management servers")
    for col, just in (("what", "left"), ("1 server", "right"), ("2 servers", "right"), ("2 / 1", "right"),
                      ("failed", "right")):
        t.add_column(col, justify=just)
    for part, label in (("list", "list calls/s (listVirtualMachines, listZones)"),
                        ("deploy", "deploy jobs completed/s")):
        r = res.get(part)
        if not r:
            continue
        a, b = r["1"]["per_s"], r["2"]["per_s"]
        t.add_row(label, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}" if a else "-",
                  str(r["1"]["failed"] + r["2"]["failed"]))
        if part == "deploy":
            t.add_row("deploy requests accepted/s", f"{r['1']['accepted_per_s']:.1f}",
                      f"{r['2']['accepted_per_s']:.1f}", "", "")
        if "server_cpu" in r["1"]:
            def cpu(x: dict) -> str:
                return "+".join(f"{c:.2f}" for c in x["server_cpu"]) + f" / {x['client_cpu']:.2f}"
            t.add_row(f"  {part}: CPU cores used, servers / client", cpu(r["1"]), cpu(r["2"]), "", "")
            t.add_row(f"  {part}: machine load (1 min)", f"{r['1']['load1']:.1f}", f"{r['2']['load1']:.1f}",
                      "", "")
    if res.get("list") or res.get("deploy"):
        console.print(t)
    f = res.get("faults")
    if f:
        ft = Table(title="faults under API load (through the API VIP, 2 servers)")
        for col in ("fault", "requests", "failed", "failed within bound", "longest wait", "DB back after"):
            ft.add_column(col, justify="right" if col != "fault" else "left")
        for ph, label, key in (("switchover", "DB switchover", "switchover_s"),
                               ("crash", f"crash of DB primary {f['crashed']}", "crash_service_s")):
            p = f[ph]
            back = f["timing"].get(key)
            ft.add_row(label, str(p["requests"]), str(p["failed"]), str(p["failed_within_bound"]),
                       f"{p['max_wait_s']:.2f} s", "-" if back is None else f"{back:.1f} s")
        console.print(ft)
        console.print(f"jobs: {f['jobs_accepted']} accepted, lost {f['jobs_lost']}, duplicated"
                      f" {f['jobs_duplicated']}, created without an answer to the client"
                      f" {f['jobs_unanswered']}; API VIP on {f['vip_holder']} -> {f['vip_holder_after']}")
        for ph in ("switchover", "crash"):
            for line in f[ph]["failures"]:
                console.print(f"  {ph} failure: {line}")
    for e in res.get("errors", []):
        console.print(f"[red]error:[/red] {e}")
    console.print(f"run took {res.get('seconds', 0):.0f} s in lab {res.get('lab', {}).get('name')}"
                  + (f"; command: {command}" if command else ""))
