"""Fault injection: crash and restart hosts, partition networks, pause processes,
slow links.

Partitions are filtered on the lab's bridges (an nftables `bridge` table in the
root namespace, matching the ports of the hosts' cables), so they cut everything
between two hosts: their fixed addresses, virtual addresses that move between
hosts, ARP. The wanted partitions live in the lab state, and the whole table is
rewritten atomically from it on every change: there is no rule to forget.

Every fault is appended to the lab's event log with CLOCK_MONOTONIC, before it
takes effect for crashes (so "crash" precedes any consequence) and after it has
taken effect for heals.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tandem.errors import LabError
from tandem.lab.shell import in_ns, run
from tandem.lab.supervisor import wait_stopped
from tandem.lab.topology import NET_IFNAME, NETWORKS

if TYPE_CHECKING:
    from tandem.lab.lab import Lab


def _networks(net: str) -> tuple[str, ...]:
    if net in ("both", "all"):
        return NETWORKS
    if net not in NETWORKS:
        raise LabError(f"network {net!r}: use public, replication or both")
    return (net,)


class Faults:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.spec = lab.spec

    # --- hosts -------------------------------------------------------------------
    def crash(self, host: str) -> list[int]:
        """Power-cut a host: SIGKILL all its processes, cables out, and its kernel
        state (mounts, loop devices) gone."""
        from tandem.lab.lab import release_host_storage
        self.spec.host(host)
        self.lab.events.record("fault", fault="crash", host=host)
        # Cables first: a host without power answers nobody at once, while killing
        # every process takes a while (and killing first left the VIPs answering ARP
        # on a live link until the addresses went, seconds after the crash). The
        # checker ends the host's VIP holdings at `host_down` and its writable
        # interval at `host_killed` (with the cables out, a running volume daemon
        # can still complete local writes).
        cut: LabError | None = None
        try:
            self._links(host, "down")
        except LabError as e:  # a cable left in: the host is down once its processes are
            cut = e
        else:
            self.lab.events.record("host_down", host=host)
        killed = self.lab.supervisor(host).kill_all()
        self.lab.events.record("host_killed", host=host, pids=len(killed))
        if cut is not None:
            self.lab.events.record("host_down", host=host)
        self._forget_addresses(host)
        release_host_storage(self.spec.host_dir(host))
        with self.lab.state() as st:  # down whatever happened: a restart puts the cables back
            if host not in st["down"]:
                st["down"].append(host)
        if cut is not None:
            raise cut
        return killed

    def restart(self, host: str) -> None:
        """Power the host back on: cables in (its services are the caller's job)."""
        self.spec.host(host)
        self._links(host, "up")
        with self.lab.state() as st:
            st["down"] = [h for h in st["down"] if h != host]
        self.lab.events.record("heal", fault="restart", host=host)

    def _forget_addresses(self, host: str) -> None:
        """A machine that loses power loses the addresses its software added
        (virtual IPs); only the configured ones come back with it."""
        import json
        ns = self.spec.netns(host)
        for net in self.spec.host(host).networks:
            out = in_ns(ns, ["ip", "-j", "-4", "addr", "show", "dev", NET_IFNAME[net]]).stdout
            fixed = str(self.spec.address(host, net))
            for link in json.loads(out or "[]"):
                for a in link.get("addr_info", []):
                    if a.get("local") != fixed:
                        in_ns(ns, ["ip", "addr", "del", f"{a['local']}/{a['prefixlen']}",
                                   "dev", NET_IFNAME[net]], check=False)

    def unplug(self, host: str) -> None:
        """Pull a host's cables without stopping anything on it (no carrier)."""
        self.lab.events.record("fault", fault="unplug", host=host)
        self._links(host, "down")

    def plug(self, host: str) -> None:
        self._links(host, "up")
        self.lab.events.record("heal", fault="unplug", host=host)

    def _links(self, host: str, updown: str) -> None:
        ns = self.spec.netns(host)
        for net in self.spec.host(host).networks:
            in_ns(ns, ["ip", "link", "set", NET_IFNAME[net], updown])
            run(["ip", "link", "set", self.spec.veth_root(host, net), updown])

    # --- partitions --------------------------------------------------------------
    def partition(self, side_a: Iterable[str], side_b: Iterable[str], net: str = "both",
                  one_way: bool = False) -> None:
        """Drop traffic between every host of side_a and every host of side_b.
        one_way: only what side_a sends to side_b is dropped."""
        a, b = list(side_a), list(side_b)
        if not a or not b:
            raise LabError("partition: both sides need at least one host")
        if set(a) & set(b):
            raise LabError(f"partition: {sorted(set(a) & set(b))} on both sides")
        for h in a + b:
            self.spec.host(h)
        new = []
        for n in _networks(net):
            for x in a:
                for y in b:
                    if n in self.spec.host(x).networks and n in self.spec.host(y).networks:
                        new.append([x, y, n])
                        if not one_way:
                            new.append([y, x, n])
        with self.lab.state() as st:
            for blk in new:
                if blk not in st["blocks"]:
                    st["blocks"].append(blk)
            blocks = st["blocks"]
        self.apply_partitions(blocks)
        self.lab.events.record("fault", fault="partition", a=a, b=b, net=net, one_way=one_way)

    def isolate(self, host: str, net: str = "both") -> None:
        others = [h for h in self.spec.host_names if h != host]
        self.partition([host], others, net)

    def heal(self) -> None:
        """Remove every partition."""
        with self.lab.state() as st:
            st["blocks"] = []
        self.apply_partitions([])
        self.lab.events.record("heal", fault="partition")

    def apply_partitions(self, blocks: list[list[str]] | None = None) -> None:
        if blocks is None:
            blocks = self.lab.read_state()["blocks"]
        table = self.spec.nft_table
        rules = "\n".join(
            f'    iifname "{self.spec.veth_root(src, n)}" oifname "{self.spec.veth_root(dst, n)}" drop'
            for src, dst, n in blocks)
        script = (f"table bridge {table} {{}}\ndelete table bridge {table}\n"
                  f"table bridge {table} {{\n  chain forward {{\n"
                  f"    type filter hook forward priority 0; policy accept;\n{rules}\n  }}\n}}\n")
        run(["nft", "-f", "-"], input=script)

    # --- processes ---------------------------------------------------------------
    def pause(self, host: str, name: str) -> None:
        sup = self.lab.supervisor(host)
        sup.signal(name, signal.SIGSTOP)
        rec = sup.get(name)  # recorded once stopped (supervisor.wait_stopped)
        stopped = rec is not None and wait_stopped(rec.pid)
        self.lab.events.record("fault", fault="pause", host=host, name=name, stopped=stopped)

    def resume(self, host: str, name: str) -> None:
        self.lab.supervisor(host).signal(name, signal.SIGCONT)
        self.lab.events.record("heal", fault="pause", host=host, name=name)

    # --- slow links --------------------------------------------------------------
    def slow(self, host: str, rate: str, net: str = "both") -> None:
        """Limit a host's links to `rate` (tc syntax: 1mbit, 500kbit) both ways."""
        ns = self.spec.netns(host)
        nets = [n for n in _networks(net) if n in self.spec.host(host).networks]
        for n in nets:
            tbf = ["tbf", "rate", rate, "burst", "64kb", "latency", "100ms"]
            run(["tc", "qdisc", "replace", "dev", self.spec.veth_root(host, n), "root", *tbf])
            in_ns(ns, ["tc", "qdisc", "replace", "dev", NET_IFNAME[n], "root", *tbf])
        with self.lab.state() as st:
            for n in nets:
                st["slow"][f"{host}/{n}"] = rate
        self.lab.events.record("fault", fault="slow", host=host, net=net, rate=rate)

    def unslow(self, host: str) -> None:
        ns = self.spec.netns(host)
        for n in self.spec.host(host).networks:
            run(["tc", "qdisc", "del", "dev", self.spec.veth_root(host, n), "root"], check=False)
            in_ns(ns, ["tc", "qdisc", "del", "dev", NET_IFNAME[n], "root"], check=False)
        with self.lab.state() as st:
            st["slow"] = {k: v for k, v in st["slow"].items() if not k.startswith(f"{host}/")}
        self.lab.events.record("heal", fault="slow", host=host)
