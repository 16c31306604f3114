"""Benchmark part: the least a replicated 4 KiB write can cost on this lab.

Why: the commit-rate target of `tandem bench volume` compares MariaDB on the
volume with MariaDB on the local disk. Every commit is a few device writes in a
row (the volume counts them), and with protocol C each of them waits for the
peer. So the ratio can never exceed (local write) / (replicated write) for the
cheapest replicated write this machine allows, whatever the implementation.
This part measures that bound with the simplest possible programs, side by side
with the local write and with the volume itself, in the same run:

  local       O_DIRECT + RWF_DSYNC 4 KiB random writes into a file on node1
  durable     the same write on node1, while the 4 KiB go over one TCP connection
              on the lab's replication network to node2, which writes them the
              same way and answers 8 bytes; the write ends with both
              (protocol C with a durable peer write: the volume's write-through)
  received    as durable, but node2 answers as soon as it has the bytes (what a
              MariaDB semi-sync replica's ack costs: it does not fsync its relay
              log before acknowledging)
  volume      O_DIRECT 4 KiB random writes on the Primary's FUSE file, through
              the tandem daemons (sealed frames, FUSE, bitmap/AL bookkeeping)

No sealing, framing checks or bookkeeping in the first three: they are the floor,
not a second implementation. Each mode runs in `rounds` interleaved slices, so
every mode sees the same background load.

``python -m tandem.bench.repl_floor peer|writer ...`` are the two programs, run
inside the lab's namespaces by :func:`measure`.
"""

from __future__ import annotations

import mmap
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tandem.bench.mariadb import BenchError
from tandem.lab.lab import Lab
from tandem.lab.shell import ns_prefix

BLOCK = 4096
SPAN = 64 << 20  # the writes land at random 4 KiB offsets within the first 64 MiB
WARMUP = 100
MODES = ("local", "durable", "received", "volume")
PORT = 7795
IO_TIMEOUT = 30.0
_OFF = struct.Struct("<Q")


def _aligned_block() -> tuple[mmap.mmap, memoryview]:
    buf = mmap.mmap(-1, BLOCK)  # page aligned, as O_DIRECT wants
    buf.write(os.urandom(BLOCK))
    return buf, memoryview(buf)


def _recv_exactly(sock: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:])
        if not k:
            return False
        got += k
    return True


def peer(addr: str, port: int, path: str, durable: bool) -> int:
    """node2: take one connection; write each block (if `durable`) and answer."""
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf, block = _aligned_block()
    head = bytearray(_OFF.size)
    with socket.create_server((addr, port)) as srv:
        srv.settimeout(IO_TIMEOUT)
        print("ready", flush=True)
        conn, _ = srv.accept()
    with conn:
        conn.settimeout(IO_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while _recv_exactly(conn, memoryview(head)) and _recv_exactly(conn, block):
            (off,) = _OFF.unpack(head)
            if not 0 <= off <= SPAN - BLOCK or off % BLOCK:
                print(f"bad offset {off}", file=sys.stderr)
                return 2
            if durable:
                os.pwritev(fd, [block], off, os.RWF_DSYNC)
            conn.sendall(head)
    os.close(fd)
    block.release()
    buf.close()
    return 0


def writer(path: str, n: int, peer_addr: str | None, port: int, source: str | None) -> list[float]:
    """node1 (or the volume's FUSE file): `n` timed writes after a warm-up; with a
    peer, each block goes to it before the local write, and the write ends with
    its answer. Returns the latencies in microseconds."""
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf, block = _aligned_block()
    conn = None
    if peer_addr is not None:
        conn = socket.create_connection((peer_addr, port), timeout=IO_TIMEOUT,
                                        source_address=(source or "", 0))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    answer = memoryview(bytearray(_OFF.size))
    rng = random.Random(7)
    out: list[float] = []
    try:
        for i in range(n + WARMUP):
            off = rng.randrange(SPAN // BLOCK) * BLOCK
            t = time.perf_counter_ns()
            if conn is not None:
                conn.sendmsg([_OFF.pack(off), block])
            os.pwritev(fd, [block], off, os.RWF_DSYNC)
            if conn is not None and not _recv_exactly(conn, answer):
                raise ConnectionError("the peer closed the connection")
            if i >= WARMUP:
                out.append((time.perf_counter_ns() - t) / 1000)
    finally:
        if conn is not None:
            conn.close()
        os.close(fd)
        block.release()
        buf.close()
    return out


def _scratch(lab: Lab, host: str) -> Path:
    path = lab.host_dir(host) / "data" / "floor.img"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:  # written, not sparse: like the volume's preallocated backing files
        zero = bytes(4 << 20)
        for off in range(0, SPAN, len(zero)):
            os.pwrite(fd, zero, off)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return path


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", "tandem.bench.repl_floor", *args]


def _slice(lab: Lab, mode: str, n: int, files: dict[str, Path], volume_file: Path | None,
           port: int) -> list[float]:
    n1 = ns_prefix(lab.spec.netns("node1"))
    if mode in ("local", "volume"):
        path = files["node1"] if mode == "local" else volume_file
        out = subprocess.run([*n1, *_module("writer", str(path), str(n))],
                             capture_output=True, text=True, timeout=600)
    else:
        addr = lab.address("node2", "replication")
        srv = subprocess.Popen([*ns_prefix(lab.spec.netns("node2")),
                                *_module("peer", addr, str(port), str(files["node2"]),
                                         "--durable" if mode == "durable" else "--no-durable")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = False
        try:
            assert srv.stdout is not None
            started = srv.stdout.readline().strip() == "ready"
            if started:
                out = subprocess.run([*n1, *_module("writer", str(files["node1"]), str(n),
                                                    "--peer", addr, "--port", str(port), "--source",
                                                    lab.address("node1", "replication"))],
                                     capture_output=True, text=True, timeout=600)
                srv.wait(timeout=IO_TIMEOUT)  # the writer hung up: the peer ends
        finally:
            if srv.poll() is None:
                srv.kill()
            _, err = srv.communicate()  # reaps it and closes its pipes
        if not started:
            raise BenchError(f"floor peer did not start: {err.strip()[-300:]}")
    if out.returncode != 0:
        raise BenchError(f"floor {mode}: {out.stderr.strip()[-300:]}")
    return [float(x) for x in out.stdout.split()]


def measure(lab: Lab, n: int, rounds: int, volume_file: Path | None) -> dict[str, Any]:
    """Every mode (``volume`` only with `volume_file`, the Primary's FUSE file, which
    must not be in use) in `rounds` interleaved slices of n // rounds writes."""
    files = {h: _scratch(lab, h) for h in ("node1", "node2")}
    modes = [m for m in MODES if m != "volume" or volume_file is not None]
    lat: dict[str, list[float]] = {m: [] for m in modes}
    per_slice = max(1, n // max(1, rounds))
    port = PORT
    try:
        for _ in range(max(1, rounds)):
            for mode in modes:
                port += 1  # a fresh port per peer: no wait for the last one's TIME_WAIT
                lat[mode] += _slice(lab, mode, per_slice, files, volume_file, port)
    finally:
        for path in files.values():
            path.unlink(missing_ok=True)
    res: dict[str, Any] = {"writes_per_mode": per_slice * max(1, rounds)}
    for mode, xs in lat.items():
        xs.sort()
        res[mode] = {"mean_us": round(statistics.fmean(xs), 1),
                     "p50_us": round(xs[len(xs) // 2], 1),
                     "p90_us": round(xs[int(len(xs) * 0.9)], 1)}
    local = res["local"]["mean_us"]
    for mode in modes[1:]:
        res[mode]["local_over_this"] = round(local / res[mode]["mean_us"], 3)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tandem.bench.repl_floor")
    sub = ap.add_subparsers(dest="role", required=True)
    p = sub.add_parser("peer")
    p.add_argument("addr")
    p.add_argument("port", type=int)
    p.add_argument("path")
    p.add_argument("--durable", action=argparse.BooleanOptionalAction, default=True)
    w = sub.add_parser("writer")
    w.add_argument("path")
    w.add_argument("n", type=int)
    w.add_argument("--peer")
    w.add_argument("--port", type=int, default=PORT)
    w.add_argument("--source")
    a = ap.parse_args(argv)
    if a.role == "peer":
        return peer(a.addr, a.port, a.path, a.durable)
    print(" ".join(f"{x:.1f}" for x in writer(a.path, a.n, a.peer, a.port, a.source)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
