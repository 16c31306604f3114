"""Fault schedules for the lab campaign, drawn from a seeded RNG.

Pure data, no side effects: the same (seed, index) always gives the same
schedule, so a schedule that broke something replays exactly
(`tandem lab torture --seed S --only K`). What a fault does to the lab is
torture_nemesis.py's job.

A schedule is one to three faults over `duration` seconds; they may overlap
(combinations: a partition during a paused agent, a crash on a slowed link...).
Every fault heals by the end of the schedule at the latest; the campaign then
heals whatever is left and waits for the cluster to converge.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

DATA = ("node1", "node2")
KINDS = ("crash", "partition", "pause", "slow", "eio")
# Partition shapes: which hosts are cut from which, on which network.
SHAPES = ("replication", "public", "isolate", "witness", "split", "one-way-out", "one-way-in")
PAUSABLE = ("agent", "mariadb", "volume-db", "etcd")
RATES = ("1mbit", "256kbit")


@dataclass(frozen=True)
class Fault:
    kind: str
    start: float  # seconds after the schedule's start
    hold: float  # seconds until it heals
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.start + self.hold

    @property
    def host(self) -> str | None:
        return self.params.get("host")

    def describe(self) -> str:
        p = self.params
        if self.kind == "partition":
            what = f"partition {p['shape']} {'|'.join(','.join(s) for s in (p['a'], p['b']))} ({p['net']})"
            return what + (" one-way" if p.get("one_way") else "")
        if self.kind == "pause":
            return f"pause {p['name']} on {p['host']}"
        if self.kind == "slow":
            return f"slow {p['host']} {p['net']} to {p['rate']}"
        return f"{self.kind} {p['host']}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "describe": self.describe()}


@dataclass(frozen=True)
class Schedule:
    seed: int
    index: int
    duration: float
    faults: tuple[Fault, ...]

    @property
    def name(self) -> str:
        return f"{self.seed}:{self.index}"

    @property
    def kind(self) -> str:
        kinds = sorted({f.kind for f in self.faults})
        return kinds[0] if len(self.faults) == 1 else "+".join(kinds)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "index": self.index, "duration": self.duration,
                "faults": [f.to_json() for f in self.faults]}


def _partition(rng: random.Random) -> dict[str, Any]:
    shape = rng.choice(SHAPES)
    x = rng.choice(DATA)
    y = next(n for n in DATA if n != x)
    others = [h for h in ("node1", "node2", "witness", "client") if h != x]
    if shape == "replication":  # only the data link: the volume disconnects, the DCS sees both
        return {"shape": shape, "a": ["node1"], "b": ["node2"], "net": "replication", "one_way": False}
    if shape == "public":  # clients and DCS lose x, the replication link stays
        return {"shape": shape, "a": [x], "b": others, "net": "public", "one_way": False}
    if shape == "isolate":  # x is a DCS minority of one
        return {"shape": shape, "a": [x], "b": others, "net": "both", "one_way": False}
    if shape == "witness":  # the tie-breaker alone: node1+node2 keep the DCS majority
        return {"shape": shape, "a": ["witness"], "b": ["node1", "node2", "client"], "net": "both",
                "one_way": False}
    if shape == "split":  # x keeps the majority with the witness, y keeps the clients
        return {"shape": shape, "a": [x, "witness"], "b": [y, "client"], "net": "both", "one_way": False}
    if shape == "one-way-out":  # x can hear but not be heard
        return {"shape": shape, "a": [x], "b": others, "net": "both", "one_way": True}
    return {"shape": shape, "a": others, "b": [x], "net": "both", "one_way": True}  # x is deaf


def draw_fault(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "partition":
        return _partition(rng)
    if kind == "pause":
        name = rng.choice(PAUSABLE)
        if name == "mariadb":  # runs on the leader only: resolved when the fault starts
            return {"host": "leader", "name": name}
        hosts = (*DATA, "witness") if name == "etcd" else DATA
        return {"host": rng.choice(hosts), "name": name}
    if kind == "slow":
        return {"host": rng.choice((*DATA, "witness")), "rate": rng.choice(RATES),
                "net": rng.choice(("public", "replication", "both"))}
    if kind == "crash":  # the witness too (etcd member, the simulated host), less often
        return {"host": rng.choice((*DATA, *DATA, "witness"))}
    return {"host": rng.choice(DATA)}  # eio


def draw_schedule(seed: int, index: int, duration: float) -> Schedule:
    """Schedule `index` of campaign `seed`: independent of every other index, so
    one can be replayed alone."""
    rng = random.Random(f"tandem-torture:{seed}:{index}")
    n = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
    faults: list[Fault] = []
    whole_host: set[str] = set()  # a crash or a failed disk owns its host for the schedule
    paused: set[tuple[str, str]] = set()
    for _ in range(20):
        if len(faults) == n:
            break
        kind = rng.choices(KINDS, weights=(3, 4, 3, 1, 1))[0]
        params = draw_fault(rng, kind)
        start = round(rng.uniform(0, duration * 0.5), 2)
        hold = round(rng.uniform(min(2.0, duration * 0.2), max(2.0, duration * 0.45)), 2)
        if kind in ("crash", "eio"):
            if params["host"] in whole_host or whole_host:
                continue  # one host-level fault per schedule: the other node is the survivor
            whole_host.add(params["host"])
        elif kind == "pause":
            if (params["host"], params["name"]) in paused:
                continue
            paused.add((params["host"], params["name"]))
        faults.append(Fault(kind, start, min(hold, duration - start), params))
    return Schedule(seed, index, duration, tuple(sorted(faults, key=lambda f: f.start)))
