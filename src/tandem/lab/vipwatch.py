"""Watch which lab hosts hold the virtual addresses, from the hosts themselves.

The agents say where they *put* a VIP; the checker's "at most one holder of each
VIP at any instant" must not trust them, so this looks at the kernels: one
`ip -ts -o -4 monitor address` per host namespace reports every address added or
deleted, stamped by `ip` the moment the kernel's netlink message arrives (far
tighter than polling, and no CPU spent when nothing moves). A snapshot of every
host at start (and at stop) anchors the history, and one every RECONCILE_EVERY
seconds corrects what a monitor missed (one respawned after a crash of its host
may subscribe after a change; a missed deletion would otherwise hide the host's
next "held" as no change). Each change becomes a `vip` event in the lab's event
log: host, address, held.

`ip -ts` stamps wall-clock time; it is turned into CLOCK_MONOTONIC (the lab's
clock) with the offset measured at start, which is exact to well under a
millisecond over a campaign.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterable
from datetime import datetime

from tandem.lab.events import monotonic
from tandem.lab.lab import Lab
from tandem.lab.shell import in_ns, ns_prefix

RECONCILE_EVERY = 5.0
"""Seconds between the looks that correct missed monitor reports (stamped when
looked: a missed deletion counts as held until then, never shorter)."""

_LINE = re.compile(r"^\[(?P<ts>[^\]]+)\]\s+(?P<deleted>Deleted\s+)?\d+:\s+\S+\s+inet\s+(?P<addr>[\d.]+)/")


def parse_monitor_line(line: str) -> tuple[float, str, bool] | None:
    """(wall time, address, held) of one `ip -ts -o -4 monitor address` line."""
    m = _LINE.match(line)
    if not m:
        return None
    try:
        wall = datetime.strptime(m["ts"], "%Y-%m-%dT%H:%M:%S.%f").timestamp()
    except ValueError:
        return None
    return wall, m["addr"], not m["deleted"]


class VipWatch:
    """Record into the lab's event log every change of `addresses` on `hosts`."""

    def __init__(self, lab: Lab, addresses: Iterable[str], hosts: Iterable[str] | None = None):
        self.lab = lab
        self.addresses = set(addresses)
        self.hosts = list(hosts or lab.spec.host_names)
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.threads: list[threading.Thread] = []
        self.held: dict[tuple[str, str], bool] = {}
        self.stamped: dict[tuple[str, str], float] = {}  # `at` of the last change recorded
        self.reported: dict[tuple[str, str], float] = {}  # when a monitor last reported (monotonic)
        self.lock = threading.Lock()
        #: one look at a time: a look must not record what it saw after a later look
        #: recorded what it saw (a crash's reconcile look and its restart look)
        self.looking = threading.Lock()
        self._stopped = threading.Event()
        self.offset = 0.0  # wall - monotonic
        self.stopping = False

    def start(self) -> None:
        self.offset = time.time() - monotonic()
        self.stopping = False
        self._stopped.clear()
        for h in self.hosts:
            self._spawn(h)
            t = threading.Thread(target=self._read, args=(h,), daemon=True, name=f"vipwatch-{h}")
            t.start()
            self.threads.append(t)
        time.sleep(0.1)  # monitors subscribed before the snapshot: no change falls between
        self.snapshot("start")
        t = threading.Thread(target=self._reconcile, daemon=True, name="vipwatch-reconcile")
        t.start()
        self.threads.append(t)

    def _reconcile(self) -> None:
        while not self.stopping:
            if self._stopped.wait(RECONCILE_EVERY):
                return
            if not self.stopping:
                with contextlib.suppress(Exception):  # the next look tries again
                    self.snapshot("reconcile")

    def _spawn(self, host: str) -> None:
        # In the host's network namespace: a crash of the host kills it with
        # everything else there; _read then starts another. Never `ip -n`: it also
        # unshares a mount namespace, and that copy of every mount at its start kept
        # the ext4 of each later unmount alive (and its loop device attached) for as
        # long as the monitor ran.
        self.procs[host] = subprocess.Popen(
            [*ns_prefix(self.lab.spec.netns(host)), "ip", "-ts", "-o", "-4", "monitor", "address"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def snapshot(self, why: str) -> dict[str, list[str]]:
        """Ask every host which watched addresses it has now (and record differences)."""
        found: dict[str, list[str]] = {}
        for h in self.hosts:
            for addr in self._snapshot_host(h, why):
                found.setdefault(addr, []).append(h)
        return found

    def _snapshot_host(self, host: str, why: str) -> set[str]:
        """A host's watched addresses now. A failed `ip` (a busy machine, a host
        going down) records nothing: "could not look" is not "does not hold", and
        recorded as that it would end a holding the monitor then never reports
        again. Nor does a look that a monitor report overtook: the report is newer."""
        with self.looking:
            began = monotonic()
            proc = in_ns(self.lab.spec.netns(host), ["ip", "-j", "-4", "addr", "show"], check=False)
            now = monotonic()
            try:
                links = json.loads(proc.stdout or "") if proc.returncode == 0 else None
            except json.JSONDecodeError:
                links = None
            if not isinstance(links, list):
                return {a for (h, a), on in list(self.held.items()) if h == host and on}
            have = set()
            for link in links:
                have |= {a.get("local") for a in link.get("addr_info", [])}
            for addr in self.addresses:
                self._set(host, addr, addr in have, now, source=why, unless_reported_since=began)
            return have & self.addresses

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.snapshot("stop")
        self.stopping = True
        self._stopped.set()
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                proc.terminate()
        for proc in list(self.procs.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for t in self.threads:
            t.join(5)

    def _read(self, host: str) -> None:
        try:
            self._follow(host)
        except Exception as e:  # the checker must learn that this host went unwatched
            if not self.stopping:
                self.lab.events.record("vipwatch_failed", host=host, error=f"{type(e).__name__}: {e}")

    def _follow(self, host: str) -> None:
        while not self.stopping:
            proc = self.procs[host]
            assert proc.stdout is not None
            for line in proc.stdout:
                parsed = parse_monitor_line(line)
                if parsed is None:
                    continue
                wall, addr, held = parsed
                if addr in self.addresses:
                    self._set(host, addr, held, wall - self.offset, source="monitor")
            proc.wait()
            if self.stopping:
                return
            self._spawn(host)  # killed by a crash of its host: watch again, and look now
            time.sleep(0.05)
            with contextlib.suppress(Exception):
                self._snapshot_host(host, "restart")

    def _set(self, host: str, addr: str, held: bool, t: float, source: str,
             unless_reported_since: float | None = None) -> None:
        """Record a change; also a monitor report stamped before the look that
        recorded its change (the look ran first; its stamp is when it looked, the
        kernel's is when it happened, and the checker takes the earlier: review 29,
        torture 220:50 stamped a holding 40 ms late). A look records changes only:
        its stale finding, stamped when it returned, sorts after the monitor's
        report of a change it missed (torture 256:7)."""
        key = (host, addr)
        with self.lock:
            if unless_reported_since is not None and self.reported.get(key, -1.0) >= unless_reported_since:
                return
            if source == "monitor":
                self.reported[key] = monotonic()
            same = self.held.get(key, False) == held
            if same and not (source == "monitor" and t < self.stamped.get(key, -1.0)):
                return
            self.held[key] = held
            self.stamped[key] = min(t, self.stamped.get(key, t)) if same else t
            extra = {} if unless_reported_since is None else {"looked_from": unless_reported_since}
            self.lab.events.record("vip", host=host, address=addr, held=held, at=t, source=source, **extra)
