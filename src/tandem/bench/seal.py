"""`tandem bench seal`: what sealing the replication frames costs, sealed against
plain, side by side in one run.

The volume benchmark measures whole systems (MariaDB on FUSE on the volume); a
few percent of crypto drown in its noise, and a run of one build against a run
of another is no comparison on a busy machine. This runs the real Link and
PeerConnection twice per round, once with ``seal_frames`` off (the only place
besides the simulation that turns it off), once on, over loopback TCP between
two processes, in alternating order. The peer does no disk I/O: what is left
is the link itself.

* ``write``: 4 KiB durable Writes one at a time, each waiting for its ack (the
  write path of a single-threaded commit): round trip p50/p99;
* ``stream``: 1 MiB frames, 16 in flight (the resync's shape): MiB/s and the
  CPU each side spends per MiB, which a loaded machine does not distort as much
  as it does wall time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from tandem.volume import wire
from tandem.volume.genid import GenerationIds
from tandem.volume.heap import keep_freed_memory
from tandem.volume.link import Link
from tandem.volume.peer import Authenticated, PeerConfig, WritesAcked
from tandem.volume.states import ConnectionState, DiskState, Role

MiB = 1 << 20
BLOCK = 4096
WINDOW = 16  # 1 MiB frames in flight in the stream
SECRET = b"tandem bench seal: a secret for loopback only"
MODES = ("plain", "sealed")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _state(role: Role) -> wire.StateExchange:
    return wire.StateExchange(role=role, disk=DiskState.UP_TO_DATE,
                              generations=GenerationIds(0x7E57), size=1 << 30, bitmap_weight=0,
                              crashed_primary=False, discard_my_data=False,
                              lost_leadership=False, block_size=BLOCK)


def _side(sock: socket.socket, primary: bool, sealed: bool, writes: int, mib: int,
          report: Any) -> None:
    """One process: the Primary sends and measures, the Secondary acknowledges."""
    keep_freed_memory()  # as the daemon does
    acked = threading.Semaphore(0)
    closed = threading.Event()
    stream_cpu0: list[float] = []  # the receiver's CPU when the first 1 MiB frame came

    def on_events(link: Link, events: list) -> None:
        acks = []
        for ev in events:
            if isinstance(ev, Authenticated):
                link.send(_state(Role.PRIMARY if primary else Role.SECONDARY))
            elif isinstance(ev, wire.Write):
                acks.append(ev.seq)
                if len(ev.data) > BLOCK and not stream_cpu0:
                    stream_cpu0.append(_cpu_s())
            elif isinstance(ev, WritesAcked):
                for _ in ev.seqs:
                    acked.release()
        if acks:
            link.send_many(wire.coalesce_acks(acks))

    cfg = PeerConfig(node="node1" if primary else "node2", secret=SECRET,
                     nonce=os.urandom(16), initiator=primary, seal_frames=sealed)
    link = Link(sock, cfg, on_events, lambda _link, _reason: closed.set())
    link.start()
    deadline = time.monotonic() + 10
    while link.state is not ConnectionState.CONNECTED:
        if time.monotonic() > deadline or closed.is_set():
            report.send({"error": f"no connection: {link.close_reason or link.state}"})
            return
        time.sleep(0.001)
    cpu0 = _cpu_s()
    if not primary:
        closed.wait(600)
        report.send({"stream_cpu_s": _cpu_s() - (stream_cpu0 or [cpu0])[0]})
        return
    out: dict[str, Any] = {}
    block = memoryview(os.urandom(BLOCK))
    lat = []
    for i in range(writes):
        t = time.perf_counter()
        link.send_write(i % 4096 * BLOCK, block, lambda _seq: None, durable=True)
        if not acked.acquire(timeout=10):
            report.send({"error": f"write {i} was never acknowledged"})
            return
        lat.append(time.perf_counter() - t)
    lat.sort()
    out["write_p50_us"] = lat[len(lat) // 2] * 1e6
    out["write_p99_us"] = lat[int(len(lat) * 0.99)] * 1e6
    out["write_cpu_us"] = (_cpu_s() - cpu0) / writes * 1e6
    big = os.urandom(WINDOW * MiB)
    cpu1, t1 = _cpu_s(), time.perf_counter()
    for _ in range(WINDOW):
        acked.release()
    for i in range(mib):
        if not acked.acquire(timeout=10):
            report.send({"error": f"1 MiB frame {i} was never acknowledged"})
            return
        off = i % WINDOW * MiB
        link.send_write(off, memoryview(big)[off:off + MiB], lambda _seq: None)
    for _ in range(WINDOW):
        acked.acquire(timeout=10)
    out["stream_mib_s"] = mib / (time.perf_counter() - t1)
    out["stream_cpu_ms_per_mib"] = (_cpu_s() - cpu1) / mib * 1e3
    report.send(out)
    link.disconnect("benchmark done")


def _round(sealed: bool, writes: int, mib: int) -> dict[str, float]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    ctx = mp.get_context("fork")
    procs, pipes = [], []
    try:
        for sock, primary in ((a, True), (b, False)):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_side, args=(sock, primary, sealed, writes, mib, theirs),
                            daemon=True)
            p.start()
            procs.append(p)
            pipes.append(mine)
        got = []
        for pipe in pipes:
            if not pipe.poll(600):
                raise RuntimeError("a side of the link never reported")
            got.append(pipe.recv())
        for g in got:
            if "error" in g:
                raise RuntimeError(g["error"])
        sender, receiver = got
        sender["stream_receiver_cpu_ms_per_mib"] = receiver["stream_cpu_s"] * 1e3 / mib
        return sender
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        a.close()
        b.close()


def run(rounds: int = 3, writes: int = 3000, mib: int = 512,
        say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    per_mode: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):  # alternate who goes first
            say(f"round {r + 1}/{rounds}: {mode}")
            per_mode[mode].append(_round(mode == "sealed", writes, mib))
    med = {m: {k: round(statistics.median(row[k] for row in rows), 2) for k in rows[0]}
           for m, rows in per_mode.items()}
    ratio = {k: round(med["sealed"][k] / med["plain"][k], 3) for k in med["plain"]
             if med["plain"][k]}
    return {"options": {"rounds": rounds, "writes": writes, "mib": mib, "window": WINDOW},
            "median": med, "sealed_vs_plain": ratio, "rounds": per_mode}


LABELS = {
    "write_p50_us": "4 KiB write round trip p50 (µs)",
    "write_p99_us": "4 KiB write round trip p99 (µs)",
    "write_cpu_us": "sender CPU per 4 KiB write (µs, with its ack)",
    "stream_mib_s": "1 MiB frames, 16 in flight (MiB/s)",
    "stream_cpu_ms_per_mib": "sender CPU per MiB (ms)",
    "stream_receiver_cpu_ms_per_mib": "receiver CPU per MiB (ms)",
}


def _num(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.0f}"


def render(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    o = res["options"]
    t = Table(title=f"replication link, plain vs sealed frames: medians of {o['rounds']}"
              " alternating rounds over loopback TCP (the peer does no disk I/O)")
    for col in ("measure", "plain", "sealed", "sealed / plain"):
        t.add_column(col, justify="right")
    med = res["median"]
    for key, label in LABELS.items():
        t.add_row(label, _num(med["plain"][key]), _num(med["sealed"][key]),
                  f"{res['sealed_vs_plain'].get(key, 0):.2f}")
    Console().print(t)
