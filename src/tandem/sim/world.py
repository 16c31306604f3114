"""One simulated cluster: DCS, network, two nodes (volume + agent), a workload,
the faults of a schedule, and the history the checker reads."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tandem.dcs.keys import Keys, decode, encode
from tandem.sim.agent import FIXES, RESOURCE, VARIANTS, SimAgent, fence_loop, unfence_peer
from tandem.sim.dcs import ModelDCS
from tandem.sim.kernel import Net, NodeClock, Process, Sim
from tandem.sim.volume import Repl, SimVolume
from tandem.volume import genid
from tandem.volume.states import DiskState

NODES = ("node1", "node2")
WRITE_EVERY = 0.02  #: the workload's period (true seconds)


@dataclass(frozen=True)
class Fault:
    """One fault. kind: crash | partition (both ways) | partition_up (node -> DCS lost) |
    partition_down (DCS -> node lost) | link_cut | pause (agent SIGSTOP) | vpause (volume
    daemon SIGSTOP) | loss (p = drop probability on the node's DCS path) | skew (p = clock
    rate - 1, whole run) | switchover (an operator request, instant)."""

    kind: str
    node: str | None
    at: float
    duration: float = 0.0
    p: float = 0.0

    def __str__(self) -> str:
        who = f" {self.node}" if self.node else ""
        extra = f" p={self.p:+.4f}" if self.p else ""
        if self.kind == "skew":
            return f"skew{who}{extra}"
        return f"{self.kind}{who} at {self.at:.3f} for {self.duration:.3f} s{extra}"


@dataclass(frozen=True)
class Violation:
    kind: str  #: two_writers | lost_write | outdated_promoted | liveness
    at: float
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} at {self.at:.4f}: {self.detail}"


class Node:
    def __init__(self, world: World, name: str):
        self.world, self.name = world, name
        self.vol = SimVolume(world, name)
        self.agent: SimAgent | None = None
        self.fences: list[Process] = []
        self.crashed = 0
        self.paused = 0

    def start_agent(self) -> None:
        w = self.world
        proc = Process(w.sim, w.net, w.dcs, self.name, w.clocks[self.name], "agent")
        self.agent = SimAgent(w, self.name, proc, self.vol)
        self.agent.start()
        if self.paused:
            proc.pause()


class World:
    def __init__(self, seed: int, faults: list[Fault], variant: str = "none",
                 net_base: float = 0.002, net_jitter: float = 0.003, busy_watch: bool = False,
                 fixes: frozenset[str] | None = None):
        self.sim = Sim(seed)
        self.fixes = frozenset(FIXES) if fixes is None else fixes
        self.busy_watch = busy_watch
        self.variant = variant
        #: "a+b" runs two broken rules at once: a later rule can hide an old one's
        #: failure (the vouch at connect resolves what a missing unfence left stuck)
        self.variants = frozenset(variant.split("+")) - {"none"}
        unknown = self.variants - set(VARIANTS)
        if unknown:  # a typo would run the product's rule and pass for a broken one
            raise ValueError(f"unknown variant(s) {', '.join(sorted(unknown))}"
                             f" (known: {', '.join(VARIANTS)})")
        #: what the lab cluster's volumes use (LabStack)
        self.split_brain_policy = genid.SplitBrainPolicy.DISCARD_LEAST_RECENT_PRIMARY
        self.cluster = "sim"
        self.keys = Keys(self.cluster)
        rates = {n: 1.0 for n in NODES}
        for f in faults:
            if f.kind == "skew" and f.node in rates:
                rates[f.node] = 1.0 + f.p
        self.clocks = {n: NodeClock(self.sim, rates[n], 1000.0 * (i + 1))
                       for i, n in enumerate(NODES)}
        self.net = Net(self.sim, net_base, net_jitter)
        self.blocks: Counter[tuple[str, str]] = Counter()
        self.dcs = ModelDCS(self.sim, self._dcs_changed, self._dcs_put)
        self.recorded_outdated = {n: False for n in NODES}
        self.nodes = {n: Node(self, n) for n in NODES}
        self.repl = Repl(self, self.nodes[NODES[0]].vol, self.nodes[NODES[1]].vol)
        self.repl.try_connect()
        self._gen = 1
        self._wid = 0
        self.acked: dict[int, tuple[str, float]] = {}
        self.ack_points: list[tuple[str, float]] = []  # acks completing outside a writable interval
        self.violations: list[Violation] = []
        self.promotions = 0
        self.faults = faults
        for f in faults:
            if f.kind != "skew":
                self.sim.at(f.at, self._fault_start, f)
                if f.duration > 0:
                    self.sim.at(f.at + f.duration, self._fault_end, f)
        for n in self.nodes.values():
            n.start_agent()
        self.sim.at(WRITE_EVERY, self._workload)
        self.sim.at(0.5, self._reconnect_timer)

    # --- plumbing ---------------------------------------------------------------------
    def broken(self, rule: str) -> bool:
        """Whether this run uses the broken (or old) rule named by a variant."""
        return rule in self.variants

    def peer_of(self, node: str) -> str:
        return NODES[1] if node == NODES[0] else NODES[0]

    def new_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _dcs_changed(self) -> None:
        """The watch: every change wakes every live agent, over its network path."""
        for n in self.nodes.values():
            if n.agent is not None and n.agent.proc.alive:
                self.net.send(n.name, "down", n.agent.proc.set_wake)

    def _dcs_put(self, key: str, value: bytes) -> None:
        """History for invariant 3: a disk is Outdated from the record that says so until the
        *other* node's leadership records it UpToDate or a resync into it completes (its own
        leadership clearing its own flag does not count)."""
        if key != self.keys.volume(RESOURCE):
            return
        held = self.dcs.kv.get(self.keys.leader)
        writer = decode(held.value).get("node") if held else None
        for node, state in (decode(value).get("disks") or {}).items():
            if state == DiskState.OUTDATED.value:
                self.recorded_outdated[node] = True
            elif state == DiskState.UP_TO_DATE.value and writer != node:
                self.recorded_outdated[node] = False

    def resynced(self, node: str) -> None:
        self.recorded_outdated[node] = False

    def _reconnect_timer(self) -> None:
        self.repl.try_connect()
        self.sim.after(0.5, self._reconnect_timer)

    def start_fence(self, vol: SimVolume) -> None:
        node = self.nodes[vol.node]
        proc = Process(self.sim, self.net, self.dcs, vol.node, self.clocks[vol.node], "fence")
        node.fences.append(proc)
        vol.fence_seq += 1
        proc.spawn(fence_loop(self, vol, proc, vol.fence_seq))

    def start_unfence(self, vol: SimVolume, why: str) -> None:
        """Replicator._unfence_soon, on a thread of the daemon, whatever its role."""
        if self.broken("no_unfence"):  # BROKEN: 184:34
            return
        if self.broken("unfence_as_leader") and vol.role.value != "Primary":
            return  # BROKEN: session 23's rule (only a Primary, under the key): seed 185
        node = self.nodes[vol.node]
        proc = Process(self.sim, self.net, self.dcs, vol.node, self.clocks[vol.node], "unfence")
        node.fences.append(proc)
        if vol.daemon_paused:
            proc.pause()
        proc.spawn(unfence_peer(self, vol, proc, why))

    # --- workload and history ------------------------------------------------------------
    def _workload(self) -> None:
        for n in self.nodes.values():
            if n.vol.up and n.vol.role.value == "Primary":
                self._wid += 1
                n.vol.write(self._wid)
        self.sim.after(WRITE_EVERY, self._workload)

    def on_ack(self, wid: int, vol: SimVolume) -> None:
        self.acked[wid] = (vol.node, self.sim.now)
        if vol._open is None:
            self.ack_points.append((vol.node, self.sim.now))

    def check_overwrite(self, target: SimVolume, source: SimVolume) -> None:
        """A resync overwrites the target with the source's data: acknowledged writes
        only the target holds are gone from both disks (a split-brain victim chosen
        wrongly, torture 90:37)."""
        gone = {w for w in target.data - source.data if w in self.acked}
        if gone:
            sample = sorted(gone)[:5]
            self.violations.append(Violation("lost_write", self.sim.now, (
                f"the resync {source.node} -> {target.node} overwrote {len(gone)} acknowledged"
                f" write(s) only {target.node} had, e.g. " + ", ".join(f"#{w}" for w in sample))))

    def on_promote(self, vol: SimVolume) -> None:
        self.promotions += 1
        now = self.sim.now
        missing = set(self.acked) - vol.data
        if missing:
            sample = sorted(missing)[:5]
            self.violations.append(Violation("lost_write", now, (
                f"{vol.node} became Primary without {len(missing)} acknowledged write(s), e.g. "
                + ", ".join(f"#{w} (acked on {self.acked[w][0]} at {self.acked[w][1]:.4f})"
                            for w in sample))))
        if vol.disk is DiskState.OUTDATED or self.recorded_outdated[vol.node]:
            self.violations.append(Violation("outdated_promoted", now, f"{vol.node} became Primary while"
                                             " its disk was recorded Outdated (and not resynced since)"))

    # --- faults ---------------------------------------------------------------------------
    def _block(self, node: str, way: str, d: int) -> None:
        key = (node, way)
        self.blocks[key] += d
        if self.blocks[key] > 0:
            self.net.blocked.add(key)
        else:
            self.net.blocked.discard(key)

    def _fault_start(self, f: Fault) -> None:
        self.sim.log("fault", f"start {f}")
        node = self.nodes.get(f.node) if f.node else None
        if f.kind == "crash" and node:
            self._power_off(node)
        elif f.kind == "disk_fail" and node:
            node.vol.fail_disk()
        elif f.kind.startswith("partition") and node:
            for way in (("up", "down") if f.kind == "partition" else (f.kind.split("_")[1],)):
                self._block(node.name, way, +1)
        elif f.kind == "link_cut":
            self.repl.cuts += 1
            self.repl.drop("link cut")
        elif f.kind == "pause" and node:
            node.paused += 1
            if node.paused == 1 and node.agent:
                node.agent.proc.pause()
        elif f.kind == "vpause" and node:
            node.vol.pause_daemon()
        elif f.kind == "loss" and node:
            self.net.loss[node.name] = f.p
        elif f.kind == "switchover":
            leader = self.dcs.view(self.keys).leader
            if leader is not None:
                value = encode({"leader": leader.node, "candidate": None})
                self.dcs.op_txn((("create", self.keys.switchover, 0),),
                                (("put", self.keys.switchover, value, 0),))

    def _fault_end(self, f: Fault) -> None:
        self.sim.log("fault", f"end {f.kind}{' ' + f.node if f.node else ''}")
        node = self.nodes.get(f.node) if f.node else None
        if f.kind == "crash" and node:
            self._power_on(node)
        elif f.kind == "disk_fail" and node:
            self._heal_disk(node)
        elif f.kind.startswith("partition") and node:
            for way in (("up", "down") if f.kind == "partition" else (f.kind.split("_")[1],)):
                self._block(node.name, way, -1)
        elif f.kind == "link_cut":
            self.repl.cuts -= 1
            self.repl.try_connect()
        elif f.kind == "pause" and node:
            node.paused -= 1
            if node.paused == 0 and node.agent:
                node.agent.proc.resume()
        elif f.kind == "vpause" and node:
            node.vol.resume_daemon()
        elif f.kind == "loss" and node:
            self.net.loss.pop(node.name, None)

    def _power_off(self, node: Node) -> None:
        node.crashed += 1
        if node.crashed == 1:
            if node.agent:
                node.agent.proc.kill()
            for p in node.fences:
                p.kill()
            node.fences.clear()
            node.vol.crash()

    def _power_on(self, node: Node) -> None:
        node.crashed -= 1
        if node.crashed == 0:
            node.vol.restart()
            node.start_agent()

    def _heal_disk(self, node: Node) -> None:
        """What the lab's operator does (torture_nemesis._heal_eio): power-cycle the
        host; a new disk if the peer's disk is UpToDate by its own account and by
        the DCS record, else the same disk attached again (it may hold the only
        copy of the newest acknowledged writes)."""
        vol = node.vol
        if vol.disk is not DiskState.FAILED:
            return
        peer = self.repl.peer_of(vol)
        record = self.dcs.view(self.keys).volume(RESOURCE)
        peer_ok = (peer.up and peer.disk is DiskState.UP_TO_DATE
                   and record is not None and record.disk(peer.node) is DiskState.UP_TO_DATE)
        self._power_off(node)
        if peer_ok or self.broken("replace_failed_disk"):  # BROKEN: 25:15, writes lost
            vol.replace_disk()
        else:
            vol.attach()
        self._power_on(node)

    def run(self, until: float) -> None:
        self.sim.run(until)
        for n in self.nodes.values():
            n.vol.finish()
