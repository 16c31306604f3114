"""The Secondary's side of an online verify with a real Replicator and a real Link over
TCP: the range is read at the request's position in the stream (a Write right behind
the request must not show up in the digests), and hashed off the receiver thread (the
Write behind the request is acknowledged while the hashing still waits)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time

from tandem.volume import wire
from tandem.volume.link import Link
from tandem.volume.peer import PeerConfig, PeerConnection, WritesAcked
from tandem.volume.states import Role
from tests.volume.test_replicator_safety import BLOCK, LINK_SECRET, _tcp_pair, make_replicator
from tests.volume.test_replicator_write_path import connect_test_peer


def _digest(block: bytes) -> bytes:
    return hashlib.sha256(block).digest()[:16]


def test_verify_reads_at_the_stream_position_and_hashes_off_the_receiver(tmp_path):
    rep = make_replicator(tmp_path)  # a Secondary; the test plays the Primary
    with open(rep.spec.backing, "r+b") as f:
        f.write(b"o" * BLOCK + b"p" * BLOCK)
    gate = threading.Event()
    hashing_started = threading.Event()
    send_digests = rep._send_verify_digests

    def gated(link, snap):
        hashing_started.set()
        gate.wait(10)
        send_digests(link, snap)

    rep._send_verify_digests = gated
    source = threading.Thread(target=rep._source_loop, daemon=True)
    source.start()
    mine, theirs = _tcp_pair()
    link = Link(mine, rep._peer_config(False), rep._on_events, rep._on_link_closed)
    peer = PeerConnection(PeerConfig(node="node2", secret=LINK_SECRET, nonce=os.urandom(16),
                                     initiator=True), now=time.monotonic())
    try:
        connect_test_peer(rep, link, theirs, peer, Role.PRIMARY)
        seq = peer.allocate_seq()
        # one send: the request, then a Write to its first block right behind it
        theirs.sendall(peer.send(wire.VerifyRequest(0, 2 * BLOCK, BLOCK))
                       + peer.send(wire.Write(seq, 0, b"n" * BLOCK, True)))
        got: list = []

        def pump_until(pred):
            theirs.settimeout(0.05)
            deadline = time.monotonic() + 10
            while not pred():
                assert time.monotonic() < deadline, f"nothing more came: {got}"
                try:
                    peer.receive_bytes(theirs.recv(1 << 16))
                except TimeoutError:
                    continue
                while (ev := peer.next_event()) is not wire.NEED_DATA:
                    got.append(ev)

        # the hashing is held in the gate: a receiver that hashed would ack nothing more
        assert hashing_started.wait(10)
        pump_until(lambda: any(isinstance(e, WritesAcked) and seq in e.seqs for e in got))
        assert not any(isinstance(e, wire.VerifyDigests) for e in got)
        gate.set()  # the hashing may go on now: the Write is on disk by then
        pump_until(lambda: any(isinstance(e, wire.VerifyDigests) for e in got))
        (answer,) = [e for e in got if isinstance(e, wire.VerifyDigests)]
        assert answer.offset == 0
        assert answer.digests == (_digest(b"o" * BLOCK), _digest(b"p" * BLOCK))
        with open(rep.spec.backing, "rb") as f:
            assert f.read(BLOCK) == b"n" * BLOCK
    finally:
        gate.set()
        link.disconnect("test over")
        theirs.close()
        rep._source_queue.put(None)
        source.join(5)
        rep.meta.close()
        rep.store.close()


def test_a_verify_after_an_aborted_one_never_takes_its_answers(tmp_path):
    """A verify aborted on a live link (a timeout, a role change) leaves requests in
    flight. The next run asked again at the same offsets: an old answer was compared
    with the new run's reads, differences that are not there were marked out of sync,
    and the new answer then found no request and dropped the link (review 35). Now the
    next run waits until the old answers have come, and an old answer handled after
    it began is matched to the run that asked for it."""
    import pytest

    from tandem.volume.replicator import VolumeError, _digests
    from tests.volume.test_replicator_safety import SIZE
    from tests.volume.test_replicator_write_path import _connected_primary
    rep, link, peer, theirs = _connected_primary(tmp_path)
    try:
        with pytest.raises(VolumeError, match="verify aborted"):
            rep.verify(timeout=0.2)  # the test's peer does not answer in time
        assert link.peer.verify_in_flight == 1
        old = _digests(rep.store.pread(0, SIZE))  # what the first run read, and the peer too
        rep.store.pwrite(0, b"n" * 4096)  # a write since (the peer has it as well)
        # The receiver is slow to handle the old answer: the next run has asked by then.
        compare = rep._compare_digests
        held = threading.Event()

        def slow_compare(on_link, ev):
            if not held.is_set():
                held.set()
                deadline = time.monotonic() + 5
                while link.peer.verify_in_flight == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)
            compare(on_link, ev)

        rep._compare_digests = slow_compare
        second: dict = {}

        def run() -> None:
            try:
                second["result"] = rep.verify(timeout=10)
            except Exception as e:  # (reported below)
                second["error"] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        requests: list[wire.VerifyRequest] = []
        theirs.settimeout(0.05)

        def take_requests(n: int) -> None:
            deadline = time.monotonic() + 5
            while len(requests) < n:
                assert time.monotonic() < deadline, f"{len(requests)} requests came, not {n}"
                try:
                    peer.receive_bytes(theirs.recv(1 << 16))
                except TimeoutError:
                    continue
                while (ev := peer.next_event()) is not wire.NEED_DATA:
                    if isinstance(ev, wire.VerifyRequest):
                        requests.append(ev)

        take_requests(1)
        time.sleep(0.3)  # the second run must not ask while the first's request is unanswered
        with contextlib.suppress(TimeoutError):
            peer.receive_bytes(theirs.recv(1 << 16))
        while (ev := peer.next_event()) is not wire.NEED_DATA:
            assert not isinstance(ev, wire.VerifyRequest), "asked again at an offset in flight"
        theirs.sendall(peer.send(wire.VerifyDigests(0, tuple(old))))  # the first run's answer
        take_requests(2)
        theirs.sendall(peer.send(wire.VerifyDigests(0, tuple(_digests(rep.store.pread(0, SIZE))))))
        t.join(10)
        assert "error" not in second, second
        assert second["result"]["out_of_sync_blocks"] == 0, second
        assert rep.bitmap.weight == 0, "the old answer was compared with the new run's reads"
        assert not link.closed, link.close_reason
    finally:
        rep.stop()
