"""`tandem bench failover`: how long the database is unwritable when the primary
dies or is switched over, measured under a steady writer in one lab run, next
to keepalived moving a bare VIP between the same hosts (issue 5 benchmark).

A private lab (default name ``bfo``) is brought up and always torn down. In it
the whole stack of :class:`tandem.lab.stack.LabStack` (etcd x3 with its leader
on the witness, the replicated volume node1<->node2, an agent per data node
running volume -> ext4 -> MariaDB -> DB VIP) and one writer on the client that
inserts uniquely numbered rows through the DB VIP, one autocommit transaction
each, logging every acknowledgement with CLOCK_MONOTONIC. Parts, in order:

* ``steady``: D seconds under the writer with no fault; counts leader changes
  (leader_acquired / demote events in the lab's event log, and the leader
  epoch) -- must be 0 -- and the longest pause between acknowledgements;
* ``crash``: N rounds of: both disks UpToDate and writes flowing; SIGKILL of
  every process of the primary with its links down (``lab.faults.crash``); wait
  for the other node to serve; restart the crashed host; wait until it is
  UpToDate again (resync time is reported too);
* ``switchover``: M rounds of ``tandem switchover --to OTHER --force``;
* ``keepalived``: the stack is stopped, keepalived runs on node1 and node2
  with one VIP (VRRP unicast, default advert_int 1 s, no scripts), and a
  prober on the client sends an ARP request for the VIP every 10 ms; K rounds
  of crashing the holder and timing until the VIP answers from the other host.

Write unavailability of a round is the longest interval between two consecutive
acknowledged writes, from the last acknowledgement before the fault up to the
first acknowledgement of a write issued after the service was seen back: that
is exactly "last acknowledged write before -> first after", and robust to a
write the dying primary still acknowledged after the fault was started.

At the end: every acknowledged id must be in the table (lost writes: 0) and the
writable intervals of the two nodes, from the volume's events with a crash
ending an interval, must never overlap (overlaps: 0).

This is a benchmark, not a test: it prints numbers and whether the issue's
targets are met; it fails only when the lab cannot be driven at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tandem.errors import LabError, TandemError
from tandem.lab.checker import lost_writes, overlapping_writers
from tandem.lab.lab import Lab

PARTS = ("steady", "crash", "switchover", "keepalived")
DATA_NODES = ("node1", "node2")
TARGETS = {"crash_median_s": 2.0, "crash_max_s": 3.0, "switchover_max_s": 1.0,
           "steady_leader_changes": 0, "lost_writes": 0, "overlaps": 0}
Say = Callable[[str], None]


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass
class FailoverOptions:
    lab: str = "bfo"
    crashes: int = 5
    switchovers: int = 5
    steady_seconds: float = 60.0
    keepalived_rounds: int = 5
    settle: float = 2.0  # seconds of undisturbed writes before each fault
    resync_timeout: float = 180.0
    service_timeout: float = 60.0
    lease_ttl: int = 1
    volume_size: str = "256MiB"
    parts: tuple[str, ...] = PARTS
    keep: bool = False  # leave the lab up (debugging)
    connect_timeout: float | None = None  # None: the lab writer's default; else passed to it
    extra: dict[str, Any] = field(default_factory=dict)


# --- the writer's log, read incrementally ------------------------------------------
class AckLog:
    """The writer's JSON-lines log, re-read from where it stopped last time."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.acks: list[dict] = []
        self.errors: list[dict] = []

    def refresh(self) -> AckLog:
        if not self.path.exists():
            return self
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # only whole lines; a cut one is read next time
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            (self.errors if "error" in rec else self.acks).append(rec)
        self.offset += end
        return self

    def wait_ack(self, pred: Callable[[dict], bool], timeout: float, what: str) -> dict:
        deadline = monotonic() + timeout
        seen = 0
        while True:
            self.refresh()
            for a in self.acks[seen:]:
                if pred(a):
                    return a
            seen = len(self.acks)
            if monotonic() > deadline:
                raise LabError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.05)


def outage(acks: list[dict], t_fault: float, t_back: float) -> dict | None:
    """The longest gap between consecutive acknowledgements from the last one at
    or before `t_fault` to the first of a write sent after `t_back` (when the
    service was seen back)."""
    acks = sorted(acks, key=lambda a: a["acked"])
    before = [i for i, a in enumerate(acks) if a["acked"] <= t_fault]
    after = [i for i, a in enumerate(acks) if a["sent"] >= t_back]
    if not before or not after:
        return None
    lo, hi = before[-1], after[0]
    best = max(range(lo, hi), key=lambda i: acks[i + 1]["acked"] - acks[i]["acked"], default=None)
    if best is None:
        return None
    last, first = acks[best]["acked"], acks[best + 1]["acked"]
    return {"gap": first - last, "last_ack": last, "first_ack": first,
            "fault_to_first_ack": first - t_fault}


def max_gap(acks: list[dict], t0: float, t1: float) -> float:
    ts = sorted(a["acked"] for a in acks if t0 <= a["acked"] <= t1)
    return max((b - a for a, b in zip(ts, ts[1:], strict=False)), default=float("nan"))


def summary(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"n": 0, "median": None, "max": None, "min": None}
    return {"n": len(vals), "median": statistics.median(vals), "max": max(vals), "min": min(vals)}


# --- the stack ---------------------------------------------------------------------
def in_sync(st: dict) -> bool:
    """A leader, both agents online and healthy, both disks UpToDate (reported
    and recorded in the DCS), the replica eligible."""
    lead = (st.get("leader") or {}).get("node")
    if not lead:
        return False
    for n in st["nodes"]:
        if not (n["online"] and n["healthy"] and n["disk"] == "UpToDate"):
            return False
        if n["node"] != lead and not n["eligible"]:
            return False
    disks = st["volumes"][0]["disks"] if st.get("volumes") else {}
    return all(disks.get(h) == "UpToDate" for h in DATA_NODES)


class Bench:
    def __init__(self, opts: FailoverOptions, say: Say):
        self.opts = opts
        self.say = say
        self.lab: Lab | None = None
        self.stack = None
        self.log: AckLog | None = None
        self.res: dict[str, Any] = {"options": {k: v for k, v in asdict(self.opts).items()
                                                if k != "extra"},
                                    "targets": TARGETS, "errors": []}

    # --- helpers ---------------------------------------------------------------------
    def ready(self) -> str:
        """Both nodes in sync and the service answering; writes flowing for
        `settle` seconds. Returns the leader."""
        st = self.stack
        st.wait(lambda: in_sync(st.status()), self.opts.resync_timeout, "both nodes UpToDate")
        lead = st.wait_service(self.opts.service_timeout)
        if self.unstick_replica(lead):
            st.wait(lambda: in_sync(st.status()), self.opts.resync_timeout, "both nodes UpToDate")
            lead = st.wait_service(self.opts.service_timeout)
        etcd_leader = st.etcd.leader()
        if etcd_leader != "witness":
            self.res.setdefault("etcd_leader_moves", []).append(etcd_leader)
            self.say(f"etcd leader on {etcd_leader}, moving it back to the witness")
            st.etcd.move_leader("witness")
        t = monotonic()
        self.log.wait_ack(lambda a: a["sent"] >= t, 30, "writes to flow")
        time.sleep(self.opts.settle)
        return lead

    def unstick_replica(self, lead: str) -> bool:
        """Stack bug guard: a Secondary whose volume still has I/O suspended (a
        fence-peer that failed while it was Primary, then a plain demotion, leaves
        the gate closed) would hang every write after its next promotion, so the
        next failover could not succeed. Record it and reboot that replica (crash
        + restart: a supported fault for a Secondary) so the rounds measure the
        failover, not this bug."""
        for h in DATA_NODES:
            if h == lead:
                continue
            try:
                vs = self.stack.volume_status(h)
            except TandemError:
                continue
            if vs.get("role") == "Secondary" and vs.get("suspended"):
                note = (f"{h}: Secondary with I/O still suspended ({vs.get('suspended_reason', '?')});"
                        " rebooted it before the round (stack bug, see the report)")
                self.res.setdefault("stack_bugs", []).append(note)
                self.say(note)
                self.lab.faults.crash(h)
                self.stack.restart_host(h)
                return True
        return False

    def events_between(self, t0: float, t1: float) -> list[dict]:
        return [e for e in self.lab.events.read() if t0 <= e["t"] <= t1]

    # --- parts -----------------------------------------------------------------------
    def steady(self) -> dict:
        o = self.opts
        self.ready()
        st0 = self.stack.status()
        t0 = monotonic()
        self.say(f"steady: {o.steady_seconds:g} s under write load, no fault"
                 f" (leader {st0['leader']['node']}, epoch {st0['epoch']})")
        end = t0 + o.steady_seconds
        while (now := monotonic()) < end:
            time.sleep(min(10.0, end - now))
            if monotonic() < end:
                self.say(f"steady: {monotonic() - t0:.0f}/{o.steady_seconds:g} s,"
                         f" leader {self.stack.leader()}")
        t1 = monotonic()
        st1 = self.stack.status()
        ev = self.events_between(t0, t1)
        self.log.refresh()
        acks = [a for a in self.log.acks if t0 <= a["acked"] <= t1]
        errors = [e for e in self.log.errors if t0 <= e["t"] <= t1]
        kinds = ("leader_acquired", "leader_released", "demote_start", "promote_start")
        changes = [e for e in ev if e["kind"] in kinds]
        out = {
            "seconds": t1 - t0,
            "leader_before": st0["leader"]["node"], "leader_after": (st1["leader"] or {}).get("node"),
            "epoch_before": st0["epoch"], "epoch_after": st1["epoch"],
            "leader_changes": max(sum(1 for e in ev if e["kind"] == "leader_acquired"),
                                  (st1["epoch"] or 0) - (st0["epoch"] or 0)),
            "role_events": [{k: e[k] for k in ("t", "kind", "node") if k in e} for e in changes],
            "writes": len(acks), "writes_per_s": len(acks) / (t1 - t0) if t1 > t0 else 0,
            "write_errors": len(errors), "max_write_gap": max_gap(self.log.acks, t0, t1),
        }
        self.say(f"steady: {out['leader_changes']} leader changes, {out['writes_per_s']:.0f} writes/s,"
                 f" longest pause {out['max_write_gap'] * 1000:.0f} ms")
        return out

    def _outage(self, what: str, new: str, served: str | None, t_fault: float) -> tuple[dict, list]:
        """After a fault: `new` serves, a write got through; the outage and its events."""
        t_back = monotonic()
        if served != new:
            raise LabError(f"{what}: expected {new} to serve, got {served}")
        self.log.wait_ack(lambda a: a["sent"] >= t_back, 30, f"a write after {what}")
        o = outage(self.log.acks, t_fault, t_back)
        if o is None:
            raise LabError(f"{what}: no acknowledged write around it")
        return o, self.events_between(t_fault, o["first_ack"] + 0.001)

    def crash_round(self, i: int) -> dict:
        st, lab = self.stack, self.lab
        old = self.ready()
        new = next(h for h in DATA_NODES if h != old)
        t_fault = monotonic()
        lab.faults.crash(old)
        t_dead = monotonic()
        try:
            served = st.wait_service(self.opts.service_timeout)
        except TandemError:
            # Bring the crashed host back, so later parts find two nodes.
            with contextlib.suppress(TandemError):
                st.restart_host(old)
            raise
        o, ev = self._outage(f"crash {i}", new, served, t_fault)
        row = {"round": i, "crashed": old, "new": new, "crash_call": t_dead - t_fault,
               **{k: o[k] for k in ("gap", "fault_to_first_ack")}}
        row.update(self.timeline(ev, t_fault, new))
        self.add_errors(row, t_fault, o)
        # The crashed host returns as a replica and catches up before the next round.
        t_r = monotonic()
        st.restart_host(old)
        st.wait(lambda: in_sync(st.status()), self.opts.resync_timeout, f"{old} resynced")
        row["resync"] = monotonic() - t_r
        self.say(f"crash {i}: {old} -> {new}: writes unavailable {o['gap']:.3f} s"
                 f" (leader key {fmt(row.get('detect'))}, promoted {fmt(row.get('promoted'))},"
                 f" VIP {fmt(row.get('vip'))}); {old} back in sync in {row['resync']:.1f} s")
        return row

    def add_errors(self, row: dict, t_fault: float, o: dict) -> None:
        """The writer's failures during the outage (seconds after the fault)."""
        errs = [e for e in self.log.errors if o["last_ack"] <= e["t"] <= o["first_ack"]]
        row["last_ack"] = o["last_ack"] - t_fault
        row["write_errors"] = len(errs)
        row["write_error_log"] = [[round(e["t"] - t_fault, 3), e["error"][:80]] for e in errs[:10]]

    @staticmethod
    def timeline(ev: list[dict], t_fault: float, new: str) -> dict:
        """Seconds after the fault: leader key taken, volume writable, each resource
        started (resource events carry durations from promote_start)."""
        out: dict[str, float] = {}
        acq = next((e for e in ev if e["kind"] == "leader_acquired" and e.get("node") == new), None)
        if acq:
            out["detect"] = acq["t"] - t_fault
        wr = next((e for e in ev if e["kind"] == "writable" and e.get("node") == new
                   and e.get("writable")), None)
        if wr:
            out["writable"] = wr["t"] - t_fault
        start = next((e for e in ev if e["kind"] == "promote_start" and e.get("node") == new), None)
        if start:
            t = start["t"]
            for e in ev:
                if e["kind"] == "resource" and e.get("node") == new and e["t"] >= start["t"]:
                    t += e.get("seconds", 0.0)
                    if e.get("resource") == "mariadb":
                        out["mariadb"] = t - t_fault
                    if e.get("resource") == "db-vip":
                        out["vip"] = t - t_fault
                        break
        prom = next((e for e in ev if e["kind"] == "promoted" and e.get("node") == new), None)
        if prom:
            out["promoted"] = prom["t"] - t_fault
        dem = next((e for e in ev if e["kind"] == "demoted" and e.get("node") != new), None)
        if dem:
            out["old_stop_start"] = dem["t"] - dem.get("seconds", 0.0) - t_fault
            out["old_demoted"] = dem["t"] - t_fault
        return out

    def switchover_round(self, i: int) -> dict:
        st = self.stack
        old = self.ready()
        new = next(h for h in DATA_NODES if h != old)
        t_fault = monotonic()
        proc = st.tandem("witness", "switchover", "--to", new, "--force", timeout=60)
        t_cmd = monotonic()
        served = st.wait_service(self.opts.service_timeout)
        o, ev = self._outage(f"switchover {i}", new, served, t_fault)
        row = {"round": i, "from": old, "to": new, "gap": o["gap"],
               "command": t_cmd - t_fault, "reported": parse_took(proc.stdout)}
        row.update(self.timeline(ev, t_fault, new))
        self.add_errors(row, t_fault, o)
        self.say(f"switchover {i}: {old} -> {new}: writes unavailable {o['gap']:.3f} s"
                 f" (command {row['command']:.2f} s, says {fmt(row['reported'])})")
        return row

    def keepalived(self) -> dict:
        from tandem.bench.keepalived import LabKeepalived
        lab, o = self.lab, self.opts
        vip = str(lab.spec.vip(1))
        ka = LabKeepalived(lab, DATA_NODES, vip)
        for h in DATA_NODES:  # a host a failed round left crashed: cables back in
            if h in lab.read_state()["down"]:
                lab.faults.restart(h)
        macs = {h: ka.mac(h) for h in DATA_NODES}
        probe = lab.host_dir("client") / "data" / "arpprobe.jsonl"
        probe.unlink(missing_ok=True)
        lab.spawn("client", "arpprobe", [sys.executable, "-m", "tandem.bench.arpprobe", "--iface", "pub0",
                                         "--source", lab.address("client"), "--target", vip,
                                         "--out", str(probe), "--interval", "0.01"])
        offsets = {h: ka.start(h) for h in DATA_NODES}
        self.say(f"keepalived: VRRP unicast node1<->node2, VIP {vip}, advert_int 1 s, priority 100,"
                 " nopreempt; waiting for a MASTER")
        rounds = []
        try:
            wait_for(lambda: ka.holder(), 30, "keepalived to elect a MASTER")
            for i in range(1, o.keepalived_rounds + 1):
                holder = ka.holder()
                if holder is None:
                    raise LabError("keepalived: nobody holds the VIP")
                other = next(h for h in DATA_NODES if h != holder)
                # The other one runs and is BACKUP (it heard the MASTER), then settle.
                wait_for(lambda o=other: "Entering BACKUP STATE" in ka.log_since(o, offsets[o]), 30,
                         f"keepalived on {other} to be BACKUP")
                time.sleep(o.settle)
                t_fault = monotonic()
                lab.faults.crash(holder)
                rec = wait_for(lambda m=macs[other], t=t_fault: first_reply(probe, m, t), 30,
                               f"the VIP to answer from {other}")
                row = {"round": i, "crashed": holder, "new": other, "vip_moved": rec["t"] - t_fault}
                garp = first_reply(probe, macs[other], t_fault, kind="garp")
                if garp:
                    row["garp"] = garp["t"] - t_fault
                rounds.append(row)
                self.say(f"keepalived {i}: {holder} crashed -> VIP answers from {other} after"
                         f" {row['vip_moved']:.3f} s")
                lab.faults.restart(holder)
                offsets[holder] = ka.start(holder)
        finally:
            ka.stop()
            if lab.supervisor("client").get("arpprobe"):
                lab.stop("client", "arpprobe", timeout=5)
        return {"vip": vip, "vrid": ka.vrid, "advert_int": ka.advert_int, "priority": ka.priority,
                "rounds": rounds, "summary": summary([r["vip_moved"] for r in rounds])}

    # --- the run ---------------------------------------------------------------------
    def run(self) -> dict:
        from tandem.lab.stack import LabStack
        o = self.opts
        if os.geteuid() != 0:
            raise LabError("the benchmark builds a lab of network namespaces: run it as root")
        Lab.down_by_name(o.lab)
        t_start = monotonic()
        self.lab = Lab.up(o.lab)
        self.res["lab"] = {"name": o.lab, "octet": self.lab.spec.octet}
        try:
            tandem_parts = [p for p in ("steady", "crash", "switchover") if p in o.parts]
            if tandem_parts:
                self.say("starting the stack: etcd x3 (leader on the witness), volume db node1<->node2,"
                         " agents on node1 and node2")
                self.stack = LabStack(self.lab, volume_size=o.volume_size, lease_ttl=o.lease_ttl)
                t0 = monotonic()
                self.stack.start()
                self.res["stack_start_s"] = monotonic() - t0
                duration = (o.steady_seconds + 120 * (o.crashes + o.switchovers) + 600)
                out = self.start_writer(duration)
                self.log = AckLog(out)
                self.log.wait_ack(lambda a: True, 60, "the writer's first write")
                self.say(f"stack up in {self.res['stack_start_s']:.1f} s; writer on the client"
                         f" -> DB VIP {self.stack.vip}:3306")
                t_w0 = monotonic()
                if "steady" in o.parts:
                    self.part("steady", self.steady)
                for kind, n, fn in (("crash", o.crashes, self.crash_round),
                                    ("switchover", o.switchovers, self.switchover_round)):
                    if kind not in o.parts or n <= 0:
                        continue
                    rows: list[dict] = []
                    self.res[kind] = {"rounds": rows}
                    for i in range(1, n + 1):
                        try:
                            rows.append(fn(i))
                        except TandemError as e:
                            self.res["errors"].append(f"{kind} {i}: {e}")
                            self.say(f"{kind} {i}: FAILED: {e}")
                            break
                    self.res[kind]["summary"] = summary([r["gap"] for r in rows])
                self.proof(t_w0)
                self.say("stopping the stack")
                self.stack.stop()
            if "keepalived" in o.parts and o.keepalived_rounds > 0:
                self.part("keepalived", self.keepalived)
        finally:
            if not o.keep:
                self.say(f"tearing down lab {o.lab}")
                Lab.down_by_name(o.lab)
        self.res["seconds"] = monotonic() - t_start
        self.res["targets_met"] = targets_met(self.res)
        return self.res

    def start_writer(self, duration: float) -> Path:
        timeout = 0.3 if self.opts.connect_timeout is None else self.opts.connect_timeout
        self.res["writer"] = f"tandem.lab.writer (connect timeout {timeout:g} s, read/write timeouts 1 s)"
        return self.stack.start_writer("benchw", duration=duration,
                                       extra=("--connect-timeout", str(timeout), "--io-timeout", "1"))

    def part(self, name: str, fn: Callable[[], dict]) -> None:
        try:
            self.res[name] = fn()
        except TandemError as e:
            self.res["errors"].append(f"{name}: {e}")
            self.say(f"{name}: FAILED: {e}")

    def proof(self, t_w0: float) -> None:
        """Stop the writer; every acknowledged id must be stored; no two writers."""
        st = self.stack
        try:
            st.wait_service(self.opts.service_timeout)
            time.sleep(0.5)
        except TandemError as e:
            self.res["errors"].append(f"proof: service not back: {e}")
        self.lab.stop("client", "benchw")
        self.log.refresh()
        acks = self.log.acks
        proof: dict[str, Any] = {"acked_writes": len(acks), "write_errors": len(self.log.errors)}
        try:
            stored = {r[0] for r in st.query("SELECT id FROM tandem.acked")}
            lost = lost_writes(acks, stored)
            proof["lost_writes"] = len(lost)
            proof["lost_examples"] = lost[:5]
        except TandemError as e:
            proof["lost_writes"] = None
            self.res["errors"].append(f"proof: could not read the table back: {e}")
        overlaps = overlapping_writers(self.lab.events.read())
        proof["overlaps"] = len(overlaps)
        proof["overlap_examples"] = [[a.__dict__, b.__dict__] for a, b in overlaps[:3]]
        self.res["proof"] = proof
        self.say(f"proof: {len(acks)} acknowledged writes, lost {proof['lost_writes']},"
                 f" overlapping writable intervals {proof['overlaps']}")


# --- small helpers -----------------------------------------------------------------
def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def first_reply(path: Path, mac: str, after: float, kind: str = "reply") -> dict | None:
    if not path.exists():
        return None
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == kind and rec["t"] > after and rec.get("mac") == mac:
                return rec
    return None


def parse_took(stdout: str) -> float | None:
    """`tandem switchover` ends with '... (0.43 s)'."""
    import re
    m = re.search(r"\(([0-9.]+) s\)\s*$", stdout.strip())
    return float(m.group(1)) if m else None


def fmt(v: float | None, unit: str = "s") -> str:
    return "-" if v is None else f"{v:.3f} {unit}".strip()


def targets_met(res: dict) -> dict[str, bool | None]:
    def get(path: str):
        cur: Any = res
        for p in path.split("."):
            if not isinstance(cur, dict) or cur.get(p) is None:
                return None
            cur = cur[p]
        return cur
    out: dict[str, bool | None] = {}
    cm, cx = get("crash.summary.median"), get("crash.summary.max")
    out["crash_median"] = None if cm is None else cm <= TARGETS["crash_median_s"]
    out["crash_max"] = None if cx is None else cx <= TARGETS["crash_max_s"]
    sx = get("switchover.summary.max")
    out["switchover"] = None if sx is None else sx <= TARGETS["switchover_max_s"]
    lc = get("steady.leader_changes")
    out["no_spurious_failover"] = None if lc is None else lc == 0
    lw = get("proof.lost_writes")
    out["no_lost_writes"] = None if lw is None else lw == 0
    ov = get("proof.overlaps")
    out["no_overlaps"] = None if ov is None else ov == 0
    return out


def run(opts: FailoverOptions, say: Say) -> dict:
    return Bench(opts, say).run()


# --- output ------------------------------------------------------------------------
def render(res: dict, command: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    met = res.get("targets_met", {})

    def mark(ok: bool | None) -> str:
        return "-" if ok is None else ("[green]yes[/green]" if ok else "[red]NO[/red]")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f} s"

    t = Table(title="write unavailability: last ack before -> first ack after"
              " (keepalived: crash -> VIP answers ARP from the new holder)")
    for col, just in (("what", "left"), ("rounds", "right"), ("median", "right"), ("max", "right"),
                      ("target", "left"), ("met", "left")):
        t.add_column(col, justify=just)
    c = (res.get("crash") or {}).get("summary") or {}
    if c:
        t.add_row("tandem: crash primary", str(c["n"]), ms(c["median"]), ms(c["max"]),
                  "med<=2 max<=3 s",
                  mark(None if met.get("crash_median") is None else
                       met["crash_median"] and bool(met.get("crash_max"))))
    s = (res.get("switchover") or {}).get("summary") or {}
    if s:
        t.add_row("tandem: switchover", str(s["n"]), ms(s["median"]), ms(s["max"]),
                  "<= 1 s", mark(met.get("switchover")))
    k = (res.get("keepalived") or {}).get("summary") or {}
    if k:
        t.add_row("keepalived: crash VIP holder", str(k["n"]),
                  ms(k["median"]), ms(k["max"]), "reference", "")
    st = res.get("steady")
    if st:
        t.add_row(f"steady {st['seconds']:.0f} s: leader changes", "", str(st["leader_changes"]), "",
                  "0", mark(met.get("no_spurious_failover")))
    p = res.get("proof")
    if p:
        t.add_row("lost acked writes", "", str(p["lost_writes"]), "",
                  "0", mark(met.get("no_lost_writes")))
        t.add_row("writable overlaps", "", str(p["overlaps"]), "", "0",
                  mark(met.get("no_overlaps")))
    console.print(t)

    def rounds_table(kind: str, title: str, cols: list[tuple[str, str]]) -> None:
        rows = (res.get(kind) or {}).get("rounds") or []
        if not rows:
            return
        rt = Table(title=title, box=None)
        for _, head in cols:
            rt.add_column(head, justify="right")
        for r in rows:
            cells = []
            for key, _ in cols:
                v = r.get(key)
                cells.append(f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v)))
            rt.add_row(*cells)
        console.print(rt)

    rounds_table("crash", "hard crashes (seconds after the crash)",
                 [("round", "#"), ("crashed", "crashed"), ("detect", "leader key"),
                  ("writable", "volume writable"), ("mariadb", "MariaDB ready"), ("vip", "VIP"),
                  ("fault_to_first_ack", "first write"), ("gap", "unavailable"),
                  ("write_errors", "errors"), ("resync", "resync")])
    rounds_table("switchover", "switchovers (seconds after the command started)",
                 [("round", "#"), ("from", "from"), ("to", "to"), ("last_ack", "last ack"),
                  ("old_stop_start", "old stops"), ("old_demoted", "old stopped"),
                  ("detect", "leader key"), ("vip", "VIP"), ("gap", "unavailable"),
                  ("command", "command"), ("reported", "CLI says")])
    rounds_table("keepalived", "keepalived rounds (seconds after the crash)",
                 [("round", "#"), ("crashed", "crashed"), ("garp", "gratuitous ARP"),
                  ("vip_moved", "VIP answers")])
    if st:
        console.print(f"steady: {st['writes']} writes ({st['writes_per_s']:.0f}/s), longest pause"
                      f" {st['max_write_gap'] * 1000:.0f} ms, {st['write_errors']}"
                      f" write errors, leader {st['leader_before']} -> {st['leader_after']}, epoch"
                      f" {st['epoch_before']} -> {st['epoch_after']}")
    p = res.get("proof")
    if p:
        console.print(f"proof: {p['acked_writes']} acknowledged writes, all in the table: "
                      f"{p['lost_writes'] == 0}; writer: {res.get('writer')}")
    for b in res.get("stack_bugs", []):
        console.print(f"[yellow]stack bug:[/yellow] {b}")
    for e in res.get("errors", []):
        console.print(f"[red]error:[/red] {e}")
    console.print(f"run took {res.get('seconds', 0):.0f} s in lab {res.get('lab', {}).get('name')}"
                  + (f"; command: {command}" if command else ""))
