"""The floor part of `tandem bench volume` measures what it says: the durable peer
really writes every block before it answers, the other one writes none, and a
frame the peer cannot place is refused without a write. (Timings are the
benchmark's business, never asserted here.)"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from tandem.bench import repl_floor
from tandem.lab.shell import ns_prefix

pytestmark = pytest.mark.lab


def _offsets(n: int) -> list[int]:
    rng = random.Random(7)  # the writer's sequence
    return [rng.randrange(repl_floor.SPAN // repl_floor.BLOCK) * repl_floor.BLOCK
            for _ in range(n + repl_floor.WARMUP)]


def _blocks(path, offsets) -> list[bytes]:
    with open(path, "rb") as f:
        out = []
        for off in offsets:
            f.seek(off)
            out.append(f.read(repl_floor.BLOCK))
        return out


@pytest.mark.parametrize(("mode", "written"), [("durable", True), ("received", False)])
def test_the_durable_peer_writes_every_block_and_the_other_writes_none(lab, mode, written):
    files = {h: repl_floor._scratch(lab, h) for h in ("node1", "node2")}
    try:
        lat = repl_floor._slice(lab, mode, 50, files, None, repl_floor.PORT + 200 + written)
        assert len(lat) == 50 and all(x > 0 for x in lat)
        offsets = _offsets(50)
        mine = _blocks(files["node1"], offsets)
        theirs = _blocks(files["node2"], offsets)
        assert all(b != bytes(repl_floor.BLOCK) for b in mine)
        if written:
            assert theirs == mine
        else:
            assert all(b == bytes(repl_floor.BLOCK) for b in theirs)
    finally:
        for p in files.values():
            p.unlink(missing_ok=True)


def test_a_frame_outside_the_span_is_refused_and_nothing_is_written(lab):
    path = repl_floor._scratch(lab, "node2")
    addr = lab.address("node2", "replication")
    port = repl_floor.PORT + 300
    srv = subprocess.Popen([*ns_prefix(lab.spec.netns("node2")), sys.executable, "-m",
                            "tandem.bench.repl_floor", "peer", addr, str(port), str(path)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        frame = repl_floor._OFF.pack(repl_floor.SPAN) + os.urandom(repl_floor.BLOCK)
        sender = (f"import socket,sys; s=socket.create_connection(({addr!r},{port}),timeout=10);"
                  f" s.sendall(bytes.fromhex({frame.hex()!r})); print(s.recv(8) == b'')")
        out = subprocess.run([*ns_prefix(lab.spec.netns("node1")), sys.executable, "-c", sender],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "True", out.stderr  # closed without an answer
        assert srv.wait(timeout=30) == 2
        assert f"bad offset {repl_floor.SPAN}" in srv.stderr.read()
        with open(path, "rb") as f:
            assert f.read() == bytes(repl_floor.SPAN)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
        path.unlink(missing_ok=True)
