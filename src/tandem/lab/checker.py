"""Checks on a lab run's history (the event log and the writer's log), all on the
one CLOCK_MONOTONIC every lab host shares.

- no acknowledged write lost: every id the writer logged as acknowledged is in
  the table read back afterwards;
- never two writers: the intervals in which a node's volume was writable
  (from its `writable` events; a host crash ends its interval) never overlap,
  and every acknowledged write was committed by a node inside one of its own
  intervals (the writer's record of the serving node, not the volume's word);
- at most one holder of each VIP at any instant (the VIP watcher's `vip` events);
- every accepted job applied exactly once on the simulated host;
- unavailability: the gap in acknowledged writes around a fault.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    node: str
    start: float
    end: float  # float("inf") while still writable

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end


def crash_ends(events: Iterable[dict], until: str = "down") -> dict[tuple[str, float], float]:
    """When each host crash (keyed by host and the `crash` event's time) took effect.

    until="down": its `host_down` event, once its cables were out. Nobody reaches
    the host from then on, so that ends its VIP holdings: an address on a host no
    frame leaves is held by nobody anyone can see.

    until="killed": its `host_killed` event, once every process of the host was
    killed, which ends its volume's writable interval. With its cables out but its
    daemon still running, a Primary already cut off from its peer could complete
    local writes for as long as killing takes (0.1-0.8 s under load; review 29:
    torture 247:6, node2's volume recorded `writable False` 2 ms after `host_down`).
    Histories from before `host_killed` end it at the nemesis's `start` record of
    the crash, written once the crash (kill included) returned, else at `host_down`.

    Histories from before `host_down` existed end both at the `crash` event."""
    ends: dict[tuple[str, float], float] = {}
    down: dict[str, float] = {}  # host -> time of its crash still waiting for `host_down`
    killed: dict[str, float] = {}  # ... still waiting for the kill
    for ev in sorted(events, key=lambda e: e["t"]):
        kind, host = ev["kind"], ev.get("host")
        if kind == "fault" and ev.get("fault") == "crash":
            down[host] = killed[host] = ev["t"]
            ends[(host, ev["t"])] = ev["t"]
        elif kind == "host_down" and host in down:
            t0 = down.pop(host)
            if until == "down" or host in killed:  # the kill's record may come later
                ends[(host, t0)] = ev["t"]
        elif until == "killed":
            if kind == "nemesis" and ev.get("fault_kind") == "crash" and ev.get("phase") == "start":
                host = str(ev.get("detail", "")).removeprefix("crashed ")
            elif kind != "host_killed":
                continue
            if host in killed:
                ends[(host, killed.pop(host))] = ev["t"]
    return ends


def writable_intervals(events: Iterable[dict]) -> list[Interval]:
    """Per node, when its volume was writable. A `write_completed` event (a write
    the volume completed while its I/O was held, see the replicator) outside every
    interval of its node stretches that node's last interval to it: the checker
    does not take the volume's word that a write completing after `writable=False`
    (or after a lease deadline `since`) cannot matter.

    The lab's own faults also bound an interval: a host crash ends it (once the
    host's processes are killed, see `crash_ends`; also one opened after the crash
    began), and so does a
    SIGSTOP of the volume daemon (a stopped daemon answers no FUSE request, so no
    write completes; it records nothing either, so without this a daemon paused and
    then crashed stayed writable until the crash: torture 87:71), recorded once
    every thread has stopped (torture 205:31: the signal takes effect only when a
    thread next runs; a pause not seen to take effect ends nothing). Its interval
    opens again when it is resumed, until the daemon's own word ends it."""
    events = list(events)
    # a crash ends the interval once the host's processes are killed, whatever
    # opened between the crash and then (torture 234:46: a promotion finishing
    # 0.1 s into a crash; nothing else ends it)
    ended = [{"kind": "_crash_end", "host": h, "t": t} for (h, _), t in crash_ends(events, "killed").items()]
    open_since: dict[str, float] = {}
    stopped: dict[str, tuple[object, bool]] = {}  # node -> (pid, writable when stopped)
    out: list[Interval] = []
    late: list[tuple[str, float]] = []

    def close(node: str, end: float) -> None:
        start = open_since.pop(node)
        if end > start:  # an empty interval: no write completed in it (late ones say so)
            out.append(Interval(node, start, end))

    for ev in sorted(events + ended, key=lambda e: e["t"]):
        kind = ev["kind"]
        if kind == "writable":
            node = ev["node"]
            if ev["writable"] and node not in open_since:
                open_since[node] = ev["t"]
            elif not ev["writable"] and node in open_since:
                # `since`: the lease deadline after which no write started, when the
                # daemon noticed later (it was paused: it records nothing while stopped)
                close(node, min(ev["t"], ev.get("since", ev["t"])))
        elif kind == "write_completed":
            late.append((ev["node"], ev["t"]))
        elif ev.get("fault") == "crash" and kind == "fault":
            stopped.pop(ev["host"], None)
        elif kind == "_crash_end" and ev["host"] in open_since:
            close(ev["host"], ev["t"])
        elif ev.get("fault") == "pause" and str(ev.get("name", "")).startswith("volume"):
            node = ev["host"]
            if kind == "fault":
                if ev.get("stopped") is False:  # not seen stopped: it may still serve
                    continue
                stopped[node] = (ev.get("pid"), node in open_since)
                if node in open_since:
                    close(node, ev["t"])
            elif kind == "heal" and node in stopped and stopped[node][0] == ev.get("pid"):
                was_writable = stopped.pop(node)[1]
                if was_writable and node not in open_since:
                    open_since[node] = ev["t"]
    out += [Interval(n, t, float("inf")) for n, t in open_since.items()]
    for node, t in late:
        if any(i.node == node and i.start <= t <= i.end for i in out):
            continue
        before = [k for k, i in enumerate(out) if i.node == node and i.end <= t]
        if before:
            k = max(before, key=lambda k: out[k].end)
            out[k] = Interval(node, out[k].start, t)
        else:
            out.append(Interval(node, t, t))
    return sorted(out, key=lambda i: i.start)


def overlapping_writers(events: Iterable[dict]) -> list[tuple[Interval, Interval]]:
    iv = writable_intervals(events)
    return [(a, b) for i, a in enumerate(iv) for b in iv[i + 1:] if a.node != b.node and a.overlaps(b)]


def serving_node(by: str) -> str | None:
    """The lab host whose database server committed an ack: its socket path
    (``.../hosts/<host>/run/...``, see the writer) names it."""
    parts = by.split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "hosts" and parts[i + 1]:
            return parts[i + 1]
    return None


def acks_outside_writable(acks: Iterable[dict], events: Iterable[dict]) -> list[tuple[dict, str]]:
    """Acknowledged writes whose node was not writable at any instant between the
    write's send and its ack, by the intervals `writable_intervals` builds. A
    commit is durable only once the node's volume completed its writes, inside
    that window, so each such ack says the intervals missed a term of that node
    (an event lost, or ended too early on the volume's word): the two-writers
    check ran on a history that was not the whole story. Acks without a
    serving node (histories from before the writer recorded it) are not judged."""
    import bisect
    starts: dict[str, list[float]] = {}
    reach: dict[str, list[float]] = {}  # the latest end of the node's intervals so far
    for iv in writable_intervals(events):  # sorted by start
        starts.setdefault(iv.node, []).append(iv.start)
        ends = reach.setdefault(iv.node, [])
        ends.append(max(iv.end, ends[-1]) if ends else iv.end)
    out = []
    for a in acks:
        node = serving_node(str(a.get("by", "")))
        if node is None:
            continue
        k = bisect.bisect_right(starts.get(node, []), a["acked"]) - 1
        if k < 0 or reach[node][k] < a["sent"]:
            out.append((a, node))
    return out


def lost_writes(acks: Iterable[dict], stored_ids: set[str]) -> list[str]:
    return [a["id"] for a in acks if a["id"] not in stored_ids]


def write_gap(acks: list[dict], t_fault: float, window: float = 30.0) -> float | None:
    """The longest time without an acknowledgement around the fault: the largest gap
    between consecutive acks that ends after `t_fault` and starts before
    `t_fault + window`. Not simply "last ack before -> first ack after": a write
    the dying primary acknowledged a millisecond after the fault was recorded made
    that 0.004 s in a demo whose writes really stopped for 1.4 s."""
    span = _longest_gap(acks, t_fault, window)
    return None if span is None else span[1] - span[0]


def writes_resumed(acks: list[dict], t_fault: float, window: float = 30.0) -> float | None:
    """When the longest gap around the fault (see `write_gap`) ended."""
    span = _longest_gap(acks, t_fault, window)
    return None if span is None else span[1]


def _longest_gap(acks: list[dict], t_fault: float, window: float) -> tuple[float, float] | None:
    times = sorted(a["acked"] for a in acks)
    if not any(t <= t_fault for t in times) or not any(t > t_fault for t in times):
        return None
    spans = [(a, b) for a, b in zip(times, times[1:], strict=False) if b > t_fault and a < t_fault + window]
    return max(spans, key=lambda s: s[1] - s[0]) if spans else None


# --- VIP holders -----------------------------------------------------------------------
LOOK_WINDOW = 0.1
"""Seconds a VIP watcher's look is taken to span when its event has no `looked_from`
(histories from before it was recorded)."""


def vip_intervals(events: Iterable[dict]) -> dict[str, list[Interval]]:
    """Per address, the intervals each host held it (from the `vip` events of the
    VIP watcher, stamped `at` the moment the host's kernel reported the change).

    A crashed host holds nothing from `host_down` (cables out, see `crash_ends`)
    until its restart puts the cables back: a look that still finds the address
    there meanwhile (the watcher's restart look can come before the crash removes
    the addresses) opens nothing, but an address held when it went down comes back
    held with the cables unless it was seen gone meanwhile."""
    events = list(events)
    down_at = crash_ends(events)
    since: dict[tuple[str, str], float] = {}
    down: set[str] = set()
    held_while_down: dict[tuple[str, str], bool] = {}
    last_report: dict[tuple[str, str], float] = {}  # the kernel's last report of each (address, host)
    out: dict[str, list[Interval]] = {}

    def end(key: tuple[str, str], t: float) -> None:
        out.setdefault(key[0], []).append(Interval(key[1], since.pop(key), t))

    relevant = (e for e in events if e["kind"] in ("vip", "host_down")
                or (e["kind"] in ("fault", "heal") and e.get("fault") in ("crash", "restart")))
    for ev in sorted(relevant, key=lambda e: e.get("at", e["t"])):
        kind = ev["kind"]
        if kind == "heal":  # the restart: cables in
            host = ev["host"]
            down.discard(host)
            for key in [k for k in held_while_down if k[1] == host]:
                if held_while_down.pop(key) and key not in since:
                    since[key] = ev["t"]
            continue
        if kind in ("fault", "host_down"):  # a crashed host (once down: cables out) holds nothing
            # (host_down: a VIP the host reported between the crash and then)
            host = ev["host"]
            t_end = down_at.get((host, ev["t"]), ev["t"])
            if kind == "host_down" or t_end == ev["t"]:  # down now (no `host_down`: an old history)
                down.add(host)
            for key in [k for k in since if k[1] == host]:
                end(key, t_end)
                held_while_down[key] = True  # until it is seen gone
            continue
        key, t = (ev["address"], ev["host"]), ev.get("at", ev["t"])
        if ev.get("source", "monitor") == "monitor":
            last_report[key] = t
        if ev["host"] in down:
            # a look's finding holds for some instant between the look's start and its
            # stamp; a kernel report inside that window is the newer word (torture
            # 256:7: a look read the address just before the crash removed it and was
            # stamped after the monitor's deletion; 254:0: only the looks saw it go)
            if ev.get("source", "monitor") == "monitor" or \
                    last_report.get(key, float("-inf")) < ev.get("looked_from", t - LOOK_WINDOW):
                held_while_down[key] = bool(ev["held"])
            continue
        held_while_down.pop(key, None)
        if ev["held"] and key not in since:
            since[key] = t
        elif not ev["held"] and key in since:
            end(key, t)
    for (addr, host), t in since.items():
        out.setdefault(addr, []).append(Interval(host, t, float("inf")))
    return {a: sorted(iv, key=lambda i: i.start) for a, iv in out.items()}


def double_vip_holders(events: Iterable[dict],
                       tolerance: float = 0.0) -> list[tuple[str, Interval, Interval]]:
    """Every time two hosts held one address at once for longer than `tolerance`
    seconds (the watcher's resolution: two hosts' reports are stamped by two
    processes)."""
    found = []
    for addr, iv in vip_intervals(events).items():
        for i, a in enumerate(iv):
            for b in iv[i + 1:]:
                if a.node != b.node and min(a.end, b.end) - max(a.start, b.start) > tolerance:
                    found.append((addr, a, b))
    return found


# --- jobs on the simulated host ---------------------------------------------------------
OPS = {"deployVirtualMachine": "create", "startVirtualMachine": "start", "stopVirtualMachine": "stop"}
"""The simulated host's operation for each API command the campaign's clients send."""


STATUS = {0: "was pending", 1: "succeeded", 2: "failed"}
"""CloudStack's jobstatus values, as the checker's messages say them."""

DONE_SLACK = 0.05
"""Seconds an effect's end (the simulated host's wall clock) may pass the moment
the client saw its job done (the lab's CLOCK_MONOTONIC, turned into wall time by
the event log's pairs): the two clocks are read by different processes."""


def wall_offset(events: Iterable[dict]) -> float | None:
    """Wall time minus CLOCK_MONOTONIC, from the event log's records (each has both):
    the median, None without such records."""
    import statistics
    diffs = [e["wall"] - e["t"] for e in events if "wall" in e and "t" in e]
    return statistics.median(diffs) if diffs else None


def wall_offsets(events: Iterable[dict]) -> Callable[[float], float] | None:
    """Wall time minus CLOCK_MONOTONIC at a monotonic time, from the event log's
    records on either side of it (the larger), None without records. One median for the whole campaign
    misjudged every job after a step of the wall clock (NTP stepped this machine's
    by 11.6 s during session 37's seeds 320-322: 639 jobs "reported done before
    their effect ended", all after the step)."""
    import bisect
    pairs = sorted((e["t"], e["wall"] - e["t"]) for e in events if "wall" in e and "t" in e)
    if not pairs:
        return None
    ts = [t for t, _ in pairs]

    def at(t: float) -> float:  # of the records on either side, the later wall time:
        i = bisect.bisect_left(ts, t)  # a step between them is not held against a job
        return max(pairs[k][1] for k in (i - 1, i) if 0 <= k < len(pairs))
    return at


def job_violations(jobs: Iterable[dict], effects: Iterable[dict],
                   db_jobs: Iterable[dict] | None = None,
                   offset: float | Callable[[float], float] | None = None) -> list[str]:
    """Every accepted job completes exactly once on the simulated host.

    `jobs`: what the API accepted, each {"jobid", "command", "status"} with the final
    CloudStack jobstatus (0 pending, 1 succeeded, 2 failed); `effects`: the simulated
    host's effect log (one line per operation applied, keyed by the job id);
    `db_jobs`: every job in the management database ({"jobid", "status", "command",
    "vm"}: "vm" is the job's instance_id, for a deploy the new VM's id), also the
    ones whose submission the client never heard back about.

    A client that lost the answer to a submission and sent it again made two jobs:
    the first (unknown to the client) applied the effect, the second found the VM
    already in that state and finished without a host operation. So a job reported
    done with no effect of its own is explained by at most one effect of the same
    operation on the same VM under an id the client never got back ("orphan");
    anything else is a violation. Orphans are held to the same rules: no request
    id applied twice, every effect belongs to a job the database knows, no job in
    the database is left pending, and one that succeeded without an effect is
    explained too (see `_unknown_done_without_effect`).

    In time (review 29), when the client recorded when it saw a job done (`done`,
    monotonic) and `offset` (wall minus monotonic, one number or by monotonic time,
    see `wall_offset` and `wall_offsets`) is known: a
    job's own effect, and the orphan that explains it, ended before the client was
    told it succeeded (a host that had not done it yet was reported done). Older
    histories have no `done` and are judged without time.

    A job's status never changes once its client was told it finished (`seen`,
    review 30): a client told "failed" about an operation that was applied, or
    "succeeded" about one that never was, was told a lie.

    In order (review 30, `_replay`): each effect makes sense in the state the one
    before left on that VM, and a job explained by an orphan finds the VM still in
    that state when it was reported done."""
    effects = list(effects)
    jobs = list(jobs)
    accepted = {str(j["jobid"]) for j in jobs}
    orphans: dict[tuple[str, str], list[float]] = {}  # (vm, op) -> the effects' ends (wall)
    for e in effects:
        if not e.get("conflict") and str(e.get("request_id")) not in accepted:
            key = (str(e.get("vm")), str(e.get("op")))
            orphans.setdefault(key, []).append(float(e.get("end") or 0.0))
    for ends in orphans.values():
        ends.sort()
    ended: dict[str, float] = {}
    for e in effects:
        if not e.get("conflict") and e.get("end") is not None:
            rid = str(e.get("request_id"))
            ended[rid] = max(ended.get(rid, 0.0), float(e["end"]))

    def told_done(j: dict) -> float | None:  # wall time, when known
        if offset is None or j.get("done") is None:
            return None
        done = float(j["done"])
        return done + (offset(done) if callable(offset) else offset)
    out = [f"job {e.get('request_id')}: {e.get('op')} ran on VM {e.get('vm')} while another operation"
           " was running on it" for e in effects if e.get("conflict")]
    failed = {str(j.get("vm")) for j in [*jobs, *(db_jobs or ())] if int(j.get("status") or 0) == 2}
    stale, steps = _replay(effects, failed)
    out += stale
    count: dict[str, int] = {}
    for e in effects:
        if not e.get("conflict"):
            count[str(e.get("request_id"))] = count.get(str(e.get("request_id")), 0) + 1
    for rid, n in count.items():
        if n > 1 and rid not in accepted:
            out.append(f"job {rid} (unknown to the client): applied {n} times on the host")
    for j in jobs:
        n = count.get(j["jobid"], 0)
        key = (str(j.get("vm")), OPS.get(j["command"], j["command"]))
        if j.get("seen") is not None and j["status"] != 0 and j["seen"] != j["status"]:
            out.append(f"job {j['jobid']} ({j['command']}): the client was told it {STATUS[j['seen']]},"
                       f" but it {STATUS[j['status']]} in the end")
        if n > 1:
            out.append(f"job {j['jobid']} ({j['command']}): applied {n} times on the host")
        elif j["status"] == 0:
            out.append(f"job {j['jobid']} ({j['command']}): accepted but never completed")
        elif j["status"] == 1 and n == 0 and orphans.get(key):
            done = told_done(j)
            ends = orphans[key]
            if done is None:
                ends.pop()
            elif ends[0] <= done + DONE_SLACK:
                ends.pop(max(k for k, t in enumerate(ends) if t <= done + DONE_SLACK))
                # and no later effect undid it before the client was told (review 30)
                now = _state_at(steps.get(key[0], []), done)
                if key[1] in AFTER and now != AFTER[key[1]] and key[0] not in failed:
                    out.append(f"job {j['jobid']} ({j['command']}): reported done at {done:.3f} (wall)"
                               f" without an operation on the host, but VM {key[0]} was {now} there then")
            else:
                out.append(f"job {j['jobid']} ({j['command']}): reported done at {done:.3f} (wall), but"
                           f" the only {key[1]} of VM {key[0]} that could explain it ended at"
                           f" {ends[0]:.3f}, after")
        elif j["status"] == 1 and n == 0:
            out.append(f"job {j['jobid']} ({j['command']}): reported done but never applied on the host")
        elif j["status"] == 1 and n == 1 and (done := told_done(j)) is not None \
                and ended.get(j["jobid"], 0.0) > done + DONE_SLACK:
            out.append(f"job {j['jobid']} ({j['command']}): reported done at {done:.3f} (wall), before its"
                       f" effect on the host ended at {ended[j['jobid']]:.3f}")
        elif j["status"] == 2 and n == 1:
            out.append(f"job {j['jobid']} ({j['command']}): reported failed but applied on the host")
    if db_jobs is not None:
        in_db = {str(j["jobid"]): j for j in db_jobs}
        for rid in count:
            if rid not in in_db:
                out.append(f"job {rid}: applied on the host, but no such job in the database")
        for rid, j in in_db.items():
            if rid in accepted:
                continue  # judged above, with what the client was told
            if int(j["status"]) == 0:
                out.append(f"job {rid} (unknown to the client): still pending in the database")
            elif int(j["status"]) == 2 and count.get(rid, 0):
                out.append(f"job {rid} (unknown to the client): failed in the database but applied"
                           " on the host")
        out += _unknown_done_without_effect(in_db, accepted, effects)
    return out


NEEDS = {"start": "Stopped", "stop": "Running"}
"""The state the simulated host's VM must be in for the management tier to ask it
for each operation (`tandem.mgmt.vmstates`: a start of a Running VM succeeds
without asking the host). From a VM in Error it asks whatever the host's state."""
AFTER = {"start": "Running", "stop": "Stopped"}


Steps = dict[str, list[tuple[float, str | None]]]
"""Per VM, (end, the VM's state after) of each effect on the simulated host, in order."""


def _replay(effects: list[dict], failed: set[str]) -> tuple[list[str], Steps]:
    """The effects on each VM in order (one operation at a time per VM; overlaps
    are reported as conflicts), each of which must make sense in the state the one
    before left (review 30): a stop of a Stopped VM, or a start of a Running one,
    is an operation the management tier decided on a stale state, unless a job on
    that VM failed (`failed`: it leaves the VM in Error, from which either is
    sent). Returns the violations and, per VM, (end, state after) of each effect."""
    by_vm: dict[str, list[dict]] = {}
    for e in effects:
        if not e.get("conflict") and e.get("start") is not None:
            by_vm.setdefault(str(e.get("vm")), []).append(e)
    out: list[str] = []
    steps: Steps = {}
    for vm, es in by_vm.items():
        es.sort(key=lambda e: float(e["start"]))
        state: str | None = None
        ran: set[str] = set()
        for e in es:
            op = str(e.get("op"))
            if str(e.get("request_id")) in ran:
                continue  # applied twice: reported as that, not as a stale decision too
            ran.add(str(e.get("request_id")))
            if op in NEEDS and state is not None and state != NEEDS[op] and vm not in failed:
                out.append(f"job {e.get('request_id')}: {op} of VM {vm} applied on the host while the VM"
                           f" was {state} there (the management tier's state was stale)")
            state = None if op == "destroy" else e.get("state") or AFTER.get(op)
            steps.setdefault(vm, []).append((float(e.get("end") or e["start"]), state))
    return out, steps


def _state_at(steps: list[tuple[float, str | None]], t: float) -> str | None:
    """A VM's state on the host at wall time `t`, after the effects that ended by then."""
    then = [state for end, state in steps if end <= t + DONE_SLACK]
    return then[-1] if then else None


def _unknown_done_without_effect(in_db: dict[str, dict], accepted: set[str],
                                 effects: list[dict]) -> list[str]:
    """Jobs the client never heard of that the database says succeeded, yet applied
    nothing on the host. A deploy always creates a VM on the host: a violation. A
    start or stop is explained by an effect of the same operation on the same VM:
    a client that lost the answer still believes the old state and sends the same
    operation again, maybe several times (a paused server answers none of them in
    time), and every one that runs after the first finds the VM already there. So
    one effect explains any number of them; without an effect of that operation
    on that VM at all, the job's success is a lie. (This cannot tell whether the VM
    was in that state when the job ran: the effect log has no order against the
    database's jobs.) Database jobs from histories saved before their command and
    VM were read (no "command") are not judged here."""
    applied = {(str(e.get("vm")), str(e.get("op"))) for e in effects if not e.get("conflict")}
    had_effect = {str(e.get("request_id")) for e in effects}
    out = []
    for rid, j in in_db.items():
        if rid in accepted or int(j["status"]) != 1 or j.get("command") is None or rid in had_effect:
            continue
        op = OPS.get(j["command"])
        what = f"job {rid} (unknown to the client, {j['command']} of VM {j.get('vm')})"
        if op == "create":
            out.append(f"{what}: succeeded in the database but created nothing on the host")
        elif op is not None and (str(j.get("vm")), op) not in applied:
            out.append(f"{what}: succeeded in the database but never applied on the host, and no"
                       f" job's {op} of that VM explains it")
    return out


# --- availability -----------------------------------------------------------------------
def unavailability(ack_times: list[float], start: float, end: float) -> float:
    """The longest time without an acknowledged write that touches [start, end]:
    gaps that begin before the fault or end after its heal count whole (a client
    sees the whole gap). `ack_times` sorted."""
    import bisect
    i = bisect.bisect_right(ack_times, start)
    prev = ack_times[i - 1] if i > 0 else start
    worst = 0.0
    while i < len(ack_times) and ack_times[i] <= end:
        worst = max(worst, ack_times[i] - prev)
        prev = ack_times[i]
        i += 1
    nxt = ack_times[i] if i < len(ack_times) else None
    if nxt is None:
        return float("inf")  # never available again
    return max(worst, nxt - prev)


def percentiles(values: list[float], ps: Iterable[int] = (50, 90, 99, 100)) -> dict[str, float]:
    """Nearest-rank percentiles (p100 = max); {} for no values."""
    import math
    v = sorted(values)
    if not v:
        return {}
    return {f"p{p}": v[max(0, math.ceil(p / 100 * len(v)) - 1)] for p in ps}
