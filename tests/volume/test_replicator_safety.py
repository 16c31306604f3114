"""Safety rules of the real Replicator found by the volume simulation (tandem sim --model
volume), tested on the real code: a real Replicator (metadata file, backing file) and, for
the handshake, a real Link over a socket pair to a PeerConnection the test drives.

- seeds 5000/4965/5881: promote() while the handshake decides the resync direction
  must wait for the decision (the StateExchange already sent says Secondary, old
  generation), never start a new generation the peer does not know about;
- seeds 6216/8979/11562/11688: an activity-log extent leaves the log only once the writes
  that completed in it are durable (the eviction flushes first);
- seed 314725: a demotion empties the log in memory as on disk, so the next term logs
  its first write into any extent before writing.

The FUSE server is not on these paths: the AL test sets the role directly instead of
promote() (which would mount the FUSE file)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

import pytest

from tandem.volume import replicator as rep_mod
from tandem.volume import wire
from tandem.volume.auth import link_secret
from tandem.volume.backing import BackingStore
from tandem.volume.genid import GenerationIds
from tandem.volume.link import Link
from tandem.volume.meta import MetaStore
from tandem.volume.peer import PeerConfig, PeerConnection, SyncDecided
from tandem.volume.replicator import Replicator, VolumeError
from tandem.volume.spec import VolumeSpec
from tandem.volume.states import ConnectionState, DiskState, Role

SECRET = b"test secret for the replicator safety tests"
#: what the replicator of resource r0 (make_replicator) authenticates with: a test
#: peer must use it too
LINK_SECRET = link_secret(SECRET, cluster="", resource="r0")
SIZE = 1 << 20
BLOCK = 4096
EXTENT = 4 * BLOCK
GEN = 0x1111


def make_replicator(tmp_path, al_slots: int = 61, write_through: bool = True) -> Replicator:
    backing, meta = tmp_path / "node1.img", tmp_path / "node1.meta"
    BackingStore.create(backing, SIZE)
    MetaStore.create(meta, SIZE, "node1", disk=DiskState.UP_TO_DATE, generations=GenerationIds(GEN),
                     al_slots=al_slots, al_extent_size=EXTENT).close()
    spec = VolumeSpec(resource="r0", node="node1", peer="node2", size=SIZE, backing=backing,
                      metadata=meta, address="127.0.0.1", peer_address="127.0.0.1", port=1,
                      ping_timeout=2.0, resync_rate=None, fence_peer_command=None, run_dir=tmp_path,
                      secret_file=tmp_path / "secret", write_through=write_through)
    return Replicator(spec, SECRET)


def test_al_eviction_flushes_writes_of_the_evicted_extent_first(tmp_path):
    rep = make_replicator(tmp_path, al_slots=2, write_through=False)  # the write-back cache
    try:
        rep.role = Role.PRIMARY  # see the module docstring; no link: writes go to the bitmap
        rep.write(0 * EXTENT, b"a" * BLOCK)
        rep.write(1 * EXTENT, b"b" * BLOCK)
        assert rep.stats["flushes"] == 0  # free slots: nothing leaves the log
        rep.write(2 * EXTENT, b"c" * BLOCK)  # evicts extent 0, written and not flushed
        assert rep.stats["flushes"] == 1
        assert rep.meta.state.al_extents == (1, 2)
        rep.write(0 * EXTENT, b"d" * BLOCK)  # evicts extent 1: its write ended before that flush
        assert rep.stats["flushes"] == 1
        assert rep.meta.state.al_extents == (2, 0)
        rep.write(3 * EXTENT, b"e" * BLOCK)  # evicts extent 2, written after the flush
        assert rep.stats["flushes"] == 2
        assert rep.meta.state.al_extents == (0, 3)
        rep.flush()
        rep.write(1 * EXTENT, b"f" * BLOCK)  # evicts extent 0, flushed by the application
        assert rep.stats["flushes"] == 3  # the application's flush only
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


@pytest.mark.parametrize("write_through", [True, False])
def test_the_term_after_a_demotion_logs_its_writes_again(tmp_path, write_through):
    rep = make_replicator(tmp_path, write_through=write_through)
    try:
        rep.role = Role.PRIMARY  # see the module docstring
        rep.write(0, b"a" * BLOCK)
        assert rep.meta.state.al_extents == (0,)
        rep.demote()
        assert rep.role is Role.SECONDARY and rep.meta.state.al_extents == ()
        rep.role = Role.PRIMARY  # switched back: a new term in the same process
        rep.write(0, b"b" * BLOCK)
        # on disk before the write: a crash now resyncs extent 0 from the next Primary
        assert rep.meta.state.al_extents == (0,)
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def _pump(sock: socket.socket, peer: PeerConnection, until, timeout: float = 5.0) -> None:
    """Drive the test's side of the link until `until()` holds."""
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"link stuck in {peer.state}"
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            continue
        peer.receive_bytes(data)
        while peer.next_event() is not wire.NEED_DATA:
            pass
        out = peer.data_to_send()
        if out:
            sock.sendall(out)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection (the link tunes TCP options)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


def _authenticated(rep: Replicator, on_closed=None, on_events=None):
    """A real Link of `rep` to a PeerConnection the test drives, past authentication:
    node1's StateExchange has reached the peer, whose own is not sent yet."""
    mine, theirs = _tcp_pair()
    link = Link(mine, rep._peer_config(True), on_events or rep._on_events,
                on_closed or rep._on_link_closed)
    rep.link = link
    peer = PeerConnection(PeerConfig(node="node2", secret=LINK_SECRET, nonce=os.urandom(16), initiator=False),
                          now=time.monotonic())
    link.start()
    theirs.sendall(peer.data_to_send())
    _pump(theirs, peer, lambda: peer.peer_status is not None)
    return link, peer, theirs


def test_promote_waits_for_the_handshake_decision(tmp_path, monkeypatch):
    monkeypatch.setattr(rep_mod, "PROMOTE_HANDSHAKE_WAIT", 0.3)
    rep = make_replicator(tmp_path)
    link, peer, theirs = _authenticated(rep)
    try:
        # node1's StateExchange (Secondary, generation GEN) reached the peer, whose own
        # StateExchange is not sent yet: node1 waits in WFReportParams
        assert peer.peer_status.role is Role.SECONDARY and peer.peer_status.generations.current == GEN
        assert link.state is ConnectionState.WF_REPORT_PARAMS
        t0 = time.monotonic()
        with pytest.raises(VolumeError, match="handshake"):
            rep.promote()
        assert time.monotonic() - t0 >= 0.3  # it waited for the decision first
        st = rep.meta.state
        assert rep.role is Role.SECONDARY and not st.primary
        assert st.generations == GenerationIds(GEN)  # no generation the peer does not know
        # the peer wrote since GEN: the decision makes node1 the bitmap-sync target,
        # and a target is not promoted either
        ahead = wire.StateExchange(role=Role.PRIMARY, disk=DiskState.UP_TO_DATE,
                                   generations=GenerationIds(0x2222, GEN), size=SIZE, bitmap_weight=0,
                                   crashed_primary=False, discard_my_data=False,
                                   lost_leadership=False, block_size=BLOCK)
        theirs.sendall(peer.send(ahead))
        deadline = time.monotonic() + 5
        while link.state is ConnectionState.WF_REPORT_PARAMS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.state in (ConnectionState.WF_BITMAP_T, ConnectionState.SYNC_TARGET)
        with pytest.raises(VolumeError):
            rep.promote()
        assert rep.meta.state.generations.current == GEN
    finally:
        if rep.fuse is not None:  # only if promote() wrongly went ahead (and mounted)
            rep.fuse.stop(timeout=2.0)
        link.disconnect("test over")
        theirs.close()
        rep.meta.close()
        rep.store.close()


def test_demotion_during_the_handshake_is_announced_after_the_decision(tmp_path):
    rep = make_replicator(tmp_path)
    mine, theirs = _tcp_pair()
    link = Link(mine, rep._peer_config(True), rep._on_events, rep._on_link_closed)
    peer = PeerConnection(PeerConfig(node="node2", secret=LINK_SECRET, nonce=os.urandom(16), initiator=False),
                          now=time.monotonic())
    try:
        rep.role = Role.PRIMARY  # see the module docstring (no FUSE file to tear down)
        rep.link = link
        link.start()
        theirs.sendall(peer.data_to_send())
        _pump(theirs, peer, lambda: peer.peer_status is not None)
        assert peer.peer_status.role is Role.PRIMARY  # what node1 said in the handshake
        rep.demote(force=True)  # the agent lost its lease meanwhile: no StateExchange now
        assert rep.role is Role.SECONDARY
        same = wire.StateExchange(role=Role.SECONDARY, disk=DiskState.UP_TO_DATE,
                                  generations=GenerationIds(GEN), size=SIZE, bitmap_weight=0,
                                  crashed_primary=False, discard_my_data=False,
                                  lost_leadership=False, block_size=BLOCK)
        theirs.sendall(peer.send(same))  # same generation: Connected, no resync
        # after the decision node1 corrects the role the peer decided on
        _pump(theirs, peer, lambda: peer.state is ConnectionState.CONNECTED
              and peer.peer_status.role is Role.SECONDARY)
    finally:
        link.disconnect("test over")
        theirs.close()
        rep.meta.close()
        rep.store.close()


def test_al_eviction_needs_no_flush_with_the_write_through_cache(tmp_path):
    rep = make_replicator(tmp_path, al_slots=2, write_through=True)
    try:
        rep.role = Role.PRIMARY  # see the module docstring
        for i in range(5):  # every write evicts from the third on: each was durable already
            rep.write((i % 3) * EXTENT, bytes([i]) * BLOCK)
        assert rep.stats["flushes"] == 0
        assert rep.meta.state.al_extents == (0, 1)
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def _fenced_replicator(tmp_path, monkeypatch, fence):
    rep = make_replicator(tmp_path)
    rep.fence_peer = fence
    monkeypatch.setattr(rep, "_mount", lambda: None)  # the FUSE front end is not on this path
    return rep


def test_promotion_without_the_peer_waits_for_fence_peer(tmp_path, monkeypatch):
    """ha simulation seeds 68805/87905/102590/107336: the leader recorded its peer
    UpToDate over a live link, the link dropped, then the volume promoted and
    acknowledged writes the cluster still counted on the peer for."""
    import threading
    calls, allow = [], threading.Event()

    def fence() -> bool:
        calls.append(time.monotonic())
        return allow.wait(5)

    rep = _fenced_replicator(tmp_path, monkeypatch, fence)
    done = threading.Event()
    try:
        rep.promote()  # no link: the peer's disk is not known Outdated
        assert rep.role is Role.PRIMARY and not rep.io_open.is_set()
        assert rep.meta.state.generations.current != GEN  # writes start a new generation
        writer = threading.Thread(target=lambda: (rep.write(0, b"x" * BLOCK), done.set()), daemon=True)
        writer.start()
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.005)
        assert calls, "fence-peer was not called"
        assert not done.wait(0.2), "a write completed before the peer was fenced"
        allow.set()
        assert done.wait(5)
        assert rep.meta.state.peer_outdated and rep.peer_disk is DiskState.OUTDATED
        assert len(calls) == 1
    finally:
        allow.set()
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_promotion_after_the_agent_recorded_the_peer_outdated_needs_no_fence(tmp_path, monkeypatch):
    calls = []
    rep = _fenced_replicator(tmp_path, monkeypatch, lambda: calls.append(1) or True)
    try:
        rep.promote(peer_outdated=True)
        assert rep.io_open.is_set()
        rep.write(0, b"y" * BLOCK)
        assert calls == [] and rep.meta.state.peer_outdated
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_a_failed_fence_then_a_demotion_fails_held_writes(tmp_path, monkeypatch):
    import threading
    rep = _fenced_replicator(tmp_path, monkeypatch, lambda: False)  # the DCS refuses every try
    errors: list[BaseException] = []

    def write():
        try:
            rep.write(0, b"z" * BLOCK)
        except OSError as e:
            errors.append(e)

    try:
        rep.promote()
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive()  # held while fence-peer keeps failing
        monkeypatch.setattr(rep, "fuse", None)
        rep.demote(force=True)
        writer.join(5)
        assert not writer.is_alive() and errors, "the held write did not fail"
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_a_write_past_the_gate_when_a_forced_demotion_lands_fails_and_stays_off_the_disk(tmp_path,
                                                                                         monkeypatch):
    """Torture 59:71: a forced demotion told the peer "Secondary" while a write that had
    passed the role check was still on its way; the peer promoted, and the write landed
    here alone, acknowledged: 2 blocks differed between the disks while both looked in
    sync. Such a write must fail, not touch this disk, and a flush after the demotion
    must not call anything durable."""
    import threading
    rep = make_replicator(tmp_path)
    gate, reached = threading.Event(), threading.Event()
    touch = rep._al_touch

    def slow_touch(offset, n):  # the writer is preempted right after the role check
        reached.set()
        gate.wait(5)
        touch(offset, n)

    monkeypatch.setattr(rep, "_al_touch", slow_touch)
    results: list[BaseException | None] = []

    def write():
        try:
            rep.write(8 * BLOCK, b"s" * BLOCK)
            results.append(None)
        except OSError as e:
            results.append(e)

    try:
        rep.role = Role.PRIMARY  # as in the AL tests: no FUSE file, no link
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        assert reached.wait(5)
        rep.demote(force=True)
        assert rep.role is Role.SECONDARY
        gate.set()
        writer.join(5)
        assert results and isinstance(results[0], OSError), results
        with open(tmp_path / "node1.img", "rb") as f:
            f.seek(8 * BLOCK)
            assert f.read(BLOCK) == bytes(BLOCK)  # nothing landed
        with pytest.raises(OSError):
            rep.flush()
    finally:
        gate.set()
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def status_exchange(role: Role) -> wire.StateExchange:
    return wire.StateExchange(role=role, disk=DiskState.UP_TO_DATE, generations=GenerationIds(GEN),
                              size=SIZE, bitmap_weight=0)


def test_verify_answers_after_a_failover_mark_nothing(tmp_path):
    """Torture 59:71: a verify started on the Primary went on after a failover; the new
    Primary's writes made its answers differ from reads done before: 2 blocks reported
    out of sync that were not. Answers that arrive after a role changed are dropped
    (and the run aborts); before that, a real difference is still marked."""
    import threading
    rep = make_replicator(tmp_path)
    try:
        peer = status_exchange(Role.SECONDARY)
        rep.role, rep.peer_status = Role.PRIMARY, peer
        rep._verify_roles = rep._roles()
        rep._verify_window = window = threading.Semaphore(0)
        same, other = b"\x01" * 16, b"\x02" * 16
        link = object()  # the link the requests went out on (answers are matched to it)
        rep._verify_run = 1
        rep._verify_asked.extend([(link, 1, 0), (link, 1, 2 * BLOCK)])
        rep._verify_expected[0] = [same, same]
        rep._compare_digests(link, wire.VerifyDigests(0, (same, other)))  # roles unchanged: marked
        assert rep.bitmap.weight == 1 and window.acquire(blocking=False)
        rep._verify_expected[2 * BLOCK] = [same, same]
        rep.role, rep.peer_status = Role.SECONDARY, status_exchange(Role.PRIMARY)  # failover
        rep._compare_digests(link, wire.VerifyDigests(2 * BLOCK, (other, other)))
        assert rep.bitmap.weight == 1  # nothing more marked
        assert window.acquire(blocking=False)  # the permit still comes back
        with pytest.raises(VolumeError, match="a role changed"):
            rep._verify_roles_unchanged(rep._verify_roles)
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


# --- a link lost while writes wait for the peer (protocol C: no write completes that
# --- the peer neither acknowledged nor was fenced for)

def _connected(rep: Replicator, on_closed=None):
    """node1 (`rep`) Connected to a PeerConnection the test drives, same generation."""
    link, peer, theirs = _authenticated(rep, on_closed)
    theirs.sendall(peer.send(status_exchange(Role.SECONDARY)))
    _pump(theirs, peer, lambda: peer.state is ConnectionState.CONNECTED)
    deadline = time.monotonic() + 5
    while (rep.peer_status is None or rep.peer_disk is None
           or link.state is not ConnectionState.CONNECTED) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert rep._writable_link() is link
    return link, peer, theirs


def _received_writes(sock: socket.socket, peer: PeerConnection, count: int) -> list[wire.Write]:
    """Read from the link until `count` Writes arrived (none is acknowledged)."""
    writes: list[wire.Write] = []
    sock.settimeout(0.05)
    deadline = time.monotonic() + 5
    while len(writes) < count:
        assert time.monotonic() < deadline, "the Write never reached the peer"
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            continue
        peer.receive_bytes(data)
        while (ev := peer.next_event()) is not wire.NEED_DATA:
            if isinstance(ev, wire.Write):
                writes.append(ev)
    return writes


def _writer(rep: Replicator, offset: int, results: list):
    import threading

    def write():
        try:
            rep.write(offset, b"w" * BLOCK)
            results.append(None)
        except OSError as e:
            results.append(e)
    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def _demote_and_see_the_write_fail(rep: Replicator, monkeypatch, writer, results: list) -> None:
    """What the agent does when the fence fails: a forced demotion; the held write fails."""
    monkeypatch.setattr(rep, "fuse", None)
    rep.demote(force=True)
    writer.join(5)
    assert results and isinstance(results[0], OSError), results


def _close(rep: Replicator, link: Link | None, theirs: socket.socket) -> None:
    if link is not None:
        link.close("test over")
    theirs.close()
    rep.role = Role.SECONDARY
    rep.meta.close()
    rep.store.close()


def test_writes_a_forced_demotion_left_waiting_for_the_ack_fail_when_the_link_drops(tmp_path,
                                                                                    monkeypatch):
    """Cut off from the DCS and the peer, the agent suspends I/O and demotes by force: the
    write is past the range lock (written here, sent), so nothing cuts the link. When the
    link then times out, the write the peer never acknowledged completed as written (and a
    waiting fsync as durable) although no fence ran and the peer may be promoted."""
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY  # no FUSE file: see the module docstring
    link, peer, theirs = _connected(rep)
    results: list = []
    try:
        writer = _writer(rep, 0, results)
        _received_writes(theirs, peer, 1)  # the peer has it and stays silent
        monkeypatch.setattr(rep, "fuse", None)
        rep.demote(force=True)
        assert rep.role is Role.SECONDARY and writer.is_alive()
        theirs.close()  # the link drops
        writer.join(5)
        assert results and isinstance(results[0], OSError), results
    finally:
        _close(rep, link, theirs)


@pytest.mark.parametrize("fence_succeeds", [False, True])
def test_a_write_that_finds_the_link_gone_waits_for_the_fence(tmp_path, monkeypatch, fence_succeeds):
    """A write passed the I/O gate, then waited (activity log, range lock) while the link
    dropped and the fence began: it found no link and completed at once, written here
    only, while the peer was not fenced yet (and an isolated Primary's fence fails)."""
    import threading
    allow, reached, gate = threading.Event(), threading.Event(), threading.Event()
    rep = _fenced_replicator(tmp_path, monkeypatch, lambda: allow.wait(5) and fence_succeeds)
    rep.role = Role.PRIMARY
    link, peer, theirs = _connected(rep)
    touch = rep._al_touch

    def slow_touch(offset, n):
        reached.set()
        gate.wait(5)
        touch(offset, n)

    monkeypatch.setattr(rep, "_al_touch", slow_touch)
    results: list = []
    try:
        writer = _writer(rep, 4 * BLOCK, results)
        assert reached.wait(5)
        theirs.close()  # the link drops while the write waits
        deadline = time.monotonic() + 5
        while rep._fencing is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert rep._fencing is not None, "the loss did not start a fence"
        gate.set()
        deadline = time.monotonic() + 5  # its activity log and the loss's metadata: fdatasyncs
        while rep.bitmap.weight != 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        writer.join(0.1)
        assert writer.is_alive() and not results, "the write completed before the peer was fenced"
        assert rep.bitmap.weight == 1  # written here, marked for the peer
        allow.set()
        if fence_succeeds:
            writer.join(5)
            assert results == [None] and rep.peer_disk is DiskState.OUTDATED
        else:
            _demote_and_see_the_write_fail(rep, monkeypatch, writer, results)
    finally:
        gate.set()
        allow.set()
        _close(rep, None, theirs)


def test_a_write_between_the_close_and_its_handling_waits_for_the_fence(tmp_path, monkeypatch):
    """The link is marked closed before its loss is handled (the fence begins): a write in
    between found no link, no fence yet, and completed at once."""
    import threading
    handling, proceed, allow = threading.Event(), threading.Event(), threading.Event()
    rep = _fenced_replicator(tmp_path, monkeypatch, lambda: allow.wait(5) and False)
    rep.role = Role.PRIMARY

    def slow_on_closed(link, reason):
        handling.set()
        proceed.wait(5)
        rep._on_link_closed(link, reason)

    link, peer, theirs = _connected(rep, on_closed=slow_on_closed)
    results: list = []
    try:
        theirs.close()
        assert handling.wait(5) and link.closed
        writer = _writer(rep, 8 * BLOCK, results)
        writer.join(0.3)
        assert writer.is_alive() and not results, "the write completed before the loss was handled"
        proceed.set()
        deadline = time.monotonic() + 5
        while rep._fencing is None and time.monotonic() < deadline:
            time.sleep(0.005)
        writer.join(0.2)
        assert writer.is_alive(), "the write completed before the peer was fenced"
        allow.set()  # the fence fails
        _demote_and_see_the_write_fail(rep, monkeypatch, writer, results)
    finally:
        proceed.set()
        allow.set()
        _close(rep, None, theirs)


def test_a_flush_whose_send_fails_waits_for_the_fence(tmp_path, monkeypatch):
    """Write-back cache: the Flush was registered, then its send failed and handed it to
    the link's loss and fence; flush() lost track of it and returned after the local
    fdatasync only, while the peer was neither flushed nor fenced."""
    import threading
    allow = threading.Event()
    rep = make_replicator(tmp_path, write_through=False)
    rep.fence_peer = lambda: allow.wait(5) and True
    rep.role = Role.PRIMARY
    link, peer, theirs = _connected(rep)

    def failing_send(parts):
        link.close("test: the send failed")
        raise ConnectionError("test: the send failed")

    monkeypatch.setattr(link, "_send_raw", failing_send)
    flushed = threading.Event()
    errors: list = []

    def flush():
        try:
            rep.flush()
        except OSError as e:
            errors.append(e)
        flushed.set()

    try:
        threading.Thread(target=flush, daemon=True).start()
        assert not flushed.wait(0.3), "the flush returned before the peer was fenced"
        allow.set()
        assert flushed.wait(5) and not errors
        assert rep.peer_disk is DiskState.OUTDATED
    finally:
        allow.set()
        _close(rep, None, theirs)


def test_a_write_while_this_side_has_not_taken_in_the_decision_is_replicated(tmp_path):
    """The link is Connected (or WFBitmapS) before the receiver took the peer's status and
    sent the bitmap: a write then went to the bitmap only; set after the bitmap went out,
    its bit was cleared at the end of the resync and the block differed for good."""
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY
    link, peer, theirs = _connected(rep)
    status, rep.peer_status = rep.peer_status, None  # the window: decided, not taken in
    results: list = []
    try:
        writer = _writer(rep, 12 * BLOCK, results)
        writer.join(0.2)
        assert writer.is_alive() and not results, "the write did not wait for the decision"
        rep.peer_status = status
        (w,) = _received_writes(theirs, peer, 1)
        theirs.sendall(peer.send(wire.WriteAck(w.seq)))
        writer.join(5)
        assert results == [None]
        assert rep.stats["bitmap_writes"] == 0 and rep.bitmap.weight == 0
    finally:
        _close(rep, link, theirs)


@contextlib.contextmanager
def _refused_as_both_primary(tmp_path, wrap_on_events=None):
    """node1, Primary, connects to a node2 that was promoted meanwhile: the refusal.
    Yields node1's Replicator once its link closed and the refusal was taken in."""
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY  # no FUSE file: see the module docstring
    mine, theirs = _tcp_pair()
    on_events = wrap_on_events(rep) if wrap_on_events else rep._on_events
    link = Link(mine, rep._peer_config(True), on_events, rep._on_link_closed)
    peer = PeerConnection(PeerConfig(node="node2", secret=LINK_SECRET, nonce=os.urandom(16), initiator=False),
                          now=time.monotonic())
    rep.link = link
    try:
        link.start()
        theirs.sendall(peer.data_to_send())
        _pump(theirs, peer, lambda: peer.peer_status is not None)
        theirs.sendall(peer.send(status_exchange(Role.PRIMARY)))  # node2 promoted meanwhile
        deadline = time.monotonic() + 5
        while not (link.closed and rep.standalone_reason) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.closed and "both nodes are Primary" in rep.standalone_reason
        assert rep._undecided_retry_at is not None, "StandAlone for good"
        yield rep
    finally:
        link.close("test over")
        theirs.close()
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_a_both_primary_refusal_is_tried_again_after_the_demotion(tmp_path, monkeypatch):
    """Torture 71:19: node1's volume daemon, paused as Primary while node2 took over,
    resumed and reconnected before its agent demoted it. "Both nodes are Primary" left
    both sides StandAlone for good, although node1 was Secondary a moment later."""
    with _refused_as_both_primary(tmp_path) as rep:
        monkeypatch.setattr(rep, "fuse", None)
        rep.demote(force=True)
        assert rep._undecided_retry_at <= time.monotonic()  # the connect loop tries again now


def test_a_refusal_that_another_thread_closed_first_still_leaves_the_volume_standalone(tmp_path):
    """The receiver sends the refusal's Disconnect before it hands the SyncDecided on; a
    writer that saw the link refused meanwhile closes it. The receiver, skipping the
    data events left in its batch on a closed link, must still take the refusal in:
    else the connector redials at once, again and again, with no reason in the status."""
    def closed_first(rep):
        def on_events(lnk: Link, events: list) -> None:
            if any(isinstance(ev, SyncDecided) for ev in events):
                lnk.close("a writer found the link refused (as _hold_unreplicated would)")
            rep._on_events(lnk, events)
        return on_events

    with _refused_as_both_primary(tmp_path, closed_first):
        pass  # the refusal is asserted on the way in


def _listening_node2(tmp_path, ping_timeout: float) -> tuple[Replicator, int]:
    """node2 (the side that listens) started on a free loopback port; its peer node1
    connects from 127.0.0.2."""
    backing, meta = tmp_path / "node2.img", tmp_path / "node2.meta"
    BackingStore.create(backing, SIZE)
    MetaStore.create(meta, SIZE, "node2", disk=DiskState.UP_TO_DATE, generations=GenerationIds(GEN),
                     al_slots=61, al_extent_size=EXTENT).close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = VolumeSpec(resource="r0", node="node2", peer="node1", size=SIZE, backing=backing,
                      metadata=meta, address="127.0.0.1", peer_address="127.0.0.2", port=port,
                      ping_timeout=ping_timeout, resync_rate=None, fence_peer_command=None,
                      run_dir=tmp_path, secret_file=tmp_path / "secret", write_through=True)
    rep = Replicator(spec, SECRET)
    assert not spec.dials  # node2 listens
    rep.start()
    deadline = time.monotonic() + 5
    while rep._listener is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return rep, port


def _from_peer_address(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))


def _authenticate_as_node1(sock: socket.socket, timeout: float) -> PeerConnection:
    """The real peer (node1 dials): a PeerConnection the test drives through the
    mutual authentication."""
    peer = PeerConnection(PeerConfig(node="node1", secret=LINK_SECRET, nonce=os.urandom(16),
                                     initiator=True), now=time.monotonic())
    sock.sendall(peer.data_to_send())
    _pump(sock, peer, lambda: peer.peer_node is not None, timeout=timeout)
    return peer


def _wait_for_authenticated_link(rep: Replicator, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (rep.link is not None and rep.link.authenticated) and time.monotonic() < deadline:
        time.sleep(0.01)  # our receiver takes the last auth message in its own time
    assert rep.link is not None and rep.link.authenticated and not rep.link.closed


def _the_peer_gets_the_link(rep: Replicator, port: int, timeout: float) -> socket.socket:
    """The real peer connects, authenticates and gets the link; its socket."""
    real = _from_peer_address(port)
    _authenticate_as_node1(real, timeout=timeout)
    _wait_for_authenticated_link(rep, timeout=timeout)
    return real


def _closed_by_node2(sock: socket.socket, timeout: float) -> bool:
    """Our Hello, then EOF within `timeout` (False: still open)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _the_peer_gets_in_past(rep: Replicator, port: int, silent: list, socks: list,
                           within: float) -> None:
    """The real peer connects after the `silent` ones, authenticates `within` seconds
    and gets the link; every silent one is closed (it made room, or another won)."""
    real = _from_peer_address(port)
    socks.append(real)
    t0 = time.monotonic()
    _authenticate_as_node1(real, timeout=8)
    assert time.monotonic() - t0 < within
    _wait_for_authenticated_link(rep, timeout=5)
    for s in silent:
        assert _closed_by_node2(s, timeout=5), "a silent connection stayed open"
    assert rep._listener.pending == []


def test_strangers_from_many_addresses_are_logged_and_remembered_within_a_bound(tmp_path, caplog):
    """A scan from many addresses: each refused at once, the first
    STRANGERS_REMEMBERED logged once each, the rest in one line a minute; the set of
    remembered addresses stops growing, and the peer still gets in."""
    from tandem.volume.listener import STRANGERS_REMEMBERED
    caplog.set_level(logging.WARNING, logger="tandem.volume")
    rep, port = _listening_node2(tmp_path, ping_timeout=2.0)
    socks = []
    try:
        n = STRANGERS_REMEMBERED + 40
        for i in range(n):
            source = f"127.0.{3 + i // 250}.{1 + i % 250}"
            with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as s:
                s.settimeout(2)
                assert s.recv(1) == b"", source  # closed at once
            if i < 3:  # the same address again: logged once
                with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as s:
                    s.settimeout(2)
                    assert s.recv(1) == b""
        refused = [r.getMessage() for r in caplog.records if "refused a replication" in r.getMessage()]
        assert len(refused) == STRANGERS_REMEMBERED + 1, len(refused)
        assert "logged once a minute" in refused[-1]
        assert len(rep._listener._strangers) == STRANGERS_REMEMBERED
        socks.append(_the_peer_gets_the_link(rep, port, timeout=5))
    finally:
        for s in socks:
            s.close()
        rep.stop()


def test_the_status_shows_the_mark_of_the_agents_outdate_while_nothing_changed_since(tmp_path):
    """The agent's outdate request can go unanswered (a paused daemon) and still be
    carried out: the status then shows its mark and the request's nonce, for the
    agent's undo, but only while the metadata is as that outdate left it, and never
    for an operator's outdate (no nonce), with or without --unless-connected."""
    rep, _ = _listening_node2(tmp_path, ping_timeout=2.0)
    try:
        assert rep.status()["disk"] == "UpToDate" and "agent_outdate" not in rep.status()
        mark = rep.outdate(unless_connected=True, nonce=7)
        assert mark is not None and rep.status()["agent_outdate"] == {"mark": mark, "nonce": 7}
        assert rep.undo_outdate(mark, time.monotonic() + 5) is None
        assert rep.status()["disk"] == "UpToDate" and "agent_outdate" not in rep.status()
        mark2 = rep.outdate(unless_connected=True, nonce=8)
        assert rep.status()["agent_outdate"] == {"mark": mark2, "nonce": 8} and mark2 != mark
        with rep.meta_lock:  # any metadata write after it (a bitmap saved, ...): the
            rep.meta.update(peer_had_all=False)  # mark will never do
        assert rep.status()["disk"] == "Outdated" and "agent_outdate" not in rep.status()
    finally:
        rep.stop()
    for i, unless in enumerate((False, True)):
        rep, _ = _listening_node2(tmp_path / f"operator{i}", ping_timeout=2.0)
        try:
            assert rep.outdate(unless_connected=unless) is not None  # `tandem volume outdate`
            assert rep.status()["disk"] == "Outdated" and "agent_outdate" not in rep.status()
        finally:
            rep.stop()


def test_the_listener_refuses_connections_from_anyone_but_the_peer(tmp_path):
    """A stranger is closed before any handshake; the peer's address gets a handshake
    (our Hello), and the link once it has authenticated."""
    rep, port = _listening_node2(tmp_path, ping_timeout=2.0)
    socks = []
    try:
        stranger = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0))
        socks.append(stranger)
        stranger.settimeout(2)
        assert stranger.recv(1) == b""  # closed at once, before any handshake
        assert rep._listener.pending == []
        socks.append(_the_peer_gets_the_link(rep, port, timeout=5))
    finally:
        for s in socks:
            s.close()
        rep.stop()


def test_silent_connections_from_the_peers_address_do_not_keep_the_peer_out(tmp_path):
    """Any process on the peer's host can connect from the peer's address and stay
    silent. The listener's one link slot used to go to the first connection, before it
    authenticated: a silent one held it for the handshake timeout (20 s here), and a
    queue of them, each in turn, kept the real peer out. Now every connection from that
    address authenticates side by side and the first to succeed gets the link. More
    silent ones than fit: the oldest, unauthenticated for a second, make room."""
    from tandem.volume.listener import MAX_PENDING
    rep, port = _listening_node2(tmp_path, ping_timeout=5.0)
    assert rep._peer_config(False).handshake_timeout == 20.0
    socks = []
    try:
        silent = [_from_peer_address(port) for _ in range(3)]
        socks += silent
        deadline = time.monotonic() + 5
        while len(rep._listener.pending) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rep._listener.pending) == 3 and rep.link is None
        # No wait for the silent ones (one at a time, each would have held the
        # slot for the 1 s grace: 3 s at least).
        _the_peer_gets_in_past(rep, port, silent, socks, within=2.9)
        first = rep.link

        # The link goes; then more silent connections than can pend, ahead of the peer's.
        first.close("test: the link drops")
        silent = [_from_peer_address(port) for _ in range(MAX_PENDING + 3)]
        socks += silent
        # One grace for the first ones to be replaced, then a poll per connection
        # (in turn, one grace each: 7 s).
        _the_peer_gets_in_past(rep, port, silent, socks, within=6.5)
        assert rep.link is not first
    finally:
        for s in socks:
            s.close()
        rep.stop()


def test_a_stream_of_silent_connections_from_the_peers_address_does_not_hold_the_peer_back(
        tmp_path):
    """A process on the peer's host opens a silent connection every 1/8 s and keeps it.
    With 4 pending handshakes and a 1 s grace (before session 36) the listener took
    4 a second: the backlog grew ahead of the real peer, which waited seconds for its
    turn. Now it takes 32 a second, and the peer gets in at once (and has 8 arrivals,
    1 s, to authenticate before it would be the oldest pending)."""
    rep, port = _listening_node2(tmp_path, ping_timeout=5.0)
    socks: list[socket.socket] = []
    stop = threading.Event()

    def flood() -> None:
        end = time.monotonic() + 5.0
        while not stop.is_set() and time.monotonic() < end:
            with contextlib.suppress(OSError):
                socks.append(_from_peer_address(port))
            time.sleep(1 / 8)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    real = None
    try:
        time.sleep(2.5)
        real = _from_peer_address(port)
        t0 = time.monotonic()
        _authenticate_as_node1(real, timeout=8)
        _wait_for_authenticated_link(rep, timeout=8)
        took = time.monotonic() - t0
        assert took < 1.5, f"the peer got the link {took:.2f} s after connecting"
    finally:
        stop.set()
        t.join(5)
        for s in [*socks, *([real] if real else [])]:
            s.close()
        rep.stop()


def test_a_wrong_secret_or_name_on_the_listener_is_reported_and_the_peer_still_gets_in(tmp_path):
    """A connection from the peer's address that fails its handshake (wrong secret)
    or authenticates under another name is closed before it can take the link, and
    the status says why the listening side has none; the real peer, connecting while
    they are pending, gets the link."""
    import json
    rep, port = _listening_node2(tmp_path, ping_timeout=2.0)
    socks = []
    try:
        wrong = _from_peer_address(port)
        socks.append(wrong)
        bad = PeerConnection(PeerConfig(node="node1", secret=b"not the secret" * 3,
                                        nonce=os.urandom(16), initiator=True), now=time.monotonic())
        wrong.sendall(bad.data_to_send())
        with contextlib.suppress(wire.ProtocolError, OSError, AssertionError):
            _pump(wrong, bad, lambda: bad.peer_node is not None or bad.terminal, timeout=3)
        with contextlib.suppress(wire.ProtocolError, OSError):
            # Our proof, if node2's failed our check before it left (it was queued)
            wrong.sendall(bad.data_to_send())
        assert _closed_by_node2(wrong, timeout=5)
        deadline = time.monotonic() + 5
        while "ended before authenticating" not in rep.status()["peer"].get("last_error", "") \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        status = json.dumps(rep.status())
        assert "ended before authenticating" in status and rep.link is None, status
        assert LINK_SECRET.hex() not in status

        impostor = _from_peer_address(port)
        socks.append(impostor)
        other = PeerConnection(PeerConfig(node="node3", secret=LINK_SECRET, nonce=os.urandom(16),
                                          initiator=True), now=time.monotonic())
        impostor.sendall(other.data_to_send())
        real = _from_peer_address(port)  # pending beside it, silent for now
        socks.append(real)
        deadline = time.monotonic() + 5
        while len(rep._listener.pending) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rep._listener.pending) == 2
        with contextlib.suppress(wire.ProtocolError, OSError, AssertionError):
            _pump(impostor, other, lambda: other.terminal, timeout=3)
        assert _closed_by_node2(impostor, timeout=5)
        assert rep.link is None and "got node3" in rep.status()["peer"]["last_error"]
        _authenticate_as_node1(real, timeout=5)  # not closed with the impostor
        _wait_for_authenticated_link(rep, timeout=5)
        assert rep.link.peer.peer_node == "node1" and not rep.link.closed
    finally:
        for s in socks:
            s.close()
        rep.stop()


def test_a_suspend_after_the_write_lease_ran_out_dates_the_end_of_writes_to_the_lease(
        tmp_path, monkeypatch):
    """Torture 75:81: node2's volume daemon was paused past its write lease; resumed,
    it ran the agent's suspend-io first, which recorded "not writable" at that moment,
    3 s after the lease had stopped every write: the checker saw two writers. The
    lab event carries the lease deadline as `since`; and a write that completes while
    I/O is held is recorded itself, for the checker not to take the volume's word."""
    import json
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("TANDEM_LAB_EVENTS", str(events))
    rep = make_replicator(tmp_path)
    try:
        rep.role = Role.PRIMARY  # no link, no FUSE (see the module docstring)
        rep.set_write_lease(time.monotonic() + 60)
        rep.write(0, b"a" * BLOCK)  # within the lease
        # (a lease set to run out 50 ms later could run out under the write's fdatasyncs)
        deadline = time.monotonic() - 0.05
        rep.set_write_lease(deadline)  # ran out (the daemon was paused past it)
        rep.suspend("the agent demotes", timeout=0)
        rec = [json.loads(line) for line in events.read_text().splitlines()]
        [ev] = [e for e in rec if e["kind"] == "writable"]
        assert ev["writable"] is False and ev["since"] == deadline, ev
        # a suspend while the lease is valid: "now", as before
        rep.set_write_lease(time.monotonic() + 60)
        rep.resume()
        rep.suspend("operator", timeout=0)
        last = [json.loads(line) for line in events.read_text().splitlines()][-1]
        assert last["kind"] == "writable" and "since" not in last, last
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


@pytest.mark.parametrize("then", ["lease renewed", "demoted"])
def test_a_write_whose_ack_comes_after_the_write_lease_ran_out_waits_for_the_next_lease(
        tmp_path, monkeypatch, then):
    """Torture 86:38 and 86:79: the Primary's volume daemon was paused with a write in
    flight; the peer acknowledged it, lost the link and was promoted; 3-4 s later the
    daemon resumed, found the ack and completed the write: "written", told to the
    application long after this node's write lease had ended and the peer had become
    the writer. Such a write waits: a renewed lease completes it, a demotion fails it."""
    import json
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("TANDEM_LAB_EVENTS", str(events))
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY  # no FUSE file: see the module docstring
    link, peer, theirs = _connected(rep)
    results: list = []
    try:
        rep.set_write_lease(time.monotonic() + 60)
        writer = _writer(rep, 0, results)
        (w,) = _received_writes(theirs, peer, 1)
        rep.set_write_lease(time.monotonic() - 0.01)  # it ran out with the write in flight
        theirs.sendall(peer.send(wire.WriteAck(w.seq)))
        writer.join(0.5)
        assert writer.is_alive() and not results, f"completed past the write lease: {results}"
        if then == "lease renewed":
            rep.set_write_lease(time.monotonic() + 60)
            writer.join(5)
            assert results == [None]
        else:
            _demote_and_see_the_write_fail(rep, monkeypatch, writer, results)
            rec = [json.loads(line) for line in events.read_text().splitlines()]
            assert not [e for e in rec if e["kind"] == "write_completed"], rec
        assert rep.store.pread(0, BLOCK) == b"w" * BLOCK  # on the disk either way (and the peer's)
    finally:
        _close(rep, link, theirs)


def test_a_forced_demotion_during_a_promotion_waits_for_it_and_leaves_no_front_end(
        tmp_path, monkeypatch):
    """Torture 93:41: the agent abandoned a start and demoted the volume while the
    start's promotion was still mounting the FUSE front end. The demotion found no
    front end to tear down, the promotion then mounted one and said "writable" on a
    volume that was Secondary again. Role changes now take turns."""
    import threading
    rep = make_replicator(tmp_path)
    mounting, stopped = threading.Event(), []

    class FakeFrontEnd:
        def stop(self, timeout: float = 0) -> None:
            stopped.append(self)

    def slow_mount() -> None:
        mounting.set()
        time.sleep(0.3)
        rep.fuse = FakeFrontEnd()

    monkeypatch.setattr(rep, "_mount", slow_mount)
    try:
        promoting = threading.Thread(target=rep.promote, kwargs={"epoch": 7}, daemon=True)
        promoting.start()
        assert mounting.wait(5)
        rep.demote(force=True)  # while the promotion mounts
        promoting.join(5)
        assert not promoting.is_alive()
        assert rep.role is Role.SECONDARY
        assert rep.fuse is None and len(stopped) == 1  # the front end it mounted was torn down
        assert not rep.meta.state.primary
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_resync_data_a_target_wrote_stays_dirty_in_its_metadata_until_synced(tmp_path):
    """The sync source clears what it has sent, so the target's saved bitmap alone
    says what it still lacks. A metadata write between the target's write of resync
    data and the fdatasync that makes it durable (its link closing, its disk
    failing) must keep those bits set: after a power cut the page cache is gone."""
    from tandem.volume import wire
    rep = make_replicator(tmp_path)
    try:
        rep.bitmap.set_all()
        rep.meta.update(disk=DiskState.INCONSISTENT)  # a sync target
        rep._apply_resync(None, wire.ResyncData(0, b"r" * BLOCK))
        rep._apply_resync_batch(None, wire.ResyncDataBatch(((BLOCK, BLOCK), (3 * BLOCK, BLOCK)),
                                                           b"s" * (2 * BLOCK)))
        assert rep.bitmap.weight * BLOCK == SIZE - 3 * BLOCK  # cleared in memory
        rep.meta.persist()  # e.g. the link closed before any checkpoint
        saved = MetaStore.open(tmp_path / "node1.meta")
        try:
            assert saved.bitmap.weight * BLOCK == SIZE, "bits of data not yet synced were saved clear"
        finally:
            saved.close()
        mark = rep.meta.undurable_mark()
        rep.store.flush()
        rep.meta.durable_upto(mark)
        rep.meta.persist()
        saved = MetaStore.open(tmp_path / "node1.meta")
        try:
            assert saved.bitmap.weight * BLOCK == SIZE - 3 * BLOCK
        finally:
            saved.close()
    finally:
        rep.meta.close()
        rep.store.close()


# --- the disk's own failures (review, session 22) ------------------------------------------

def _saved(tmp_path):
    saved = MetaStore.open(tmp_path / "node1.meta")
    try:
        return saved.state, saved.bitmap.weight, [saved.bitmap.test(b) for b in range(4)]
    finally:
        saved.close()


def test_a_write_the_peer_took_while_ours_failed_is_recorded_and_the_disk_returns_outdated(
        tmp_path, monkeypatch):
    """Write-through, connected: the Write goes to the peer, which applies and
    acknowledges it; our own write then fails (a real EIO comes after the device's
    timeout, long after the ack). Nothing marked the block: `attach` took the disk
    back UpToDate, both sides kept one generation, and they differed for good. The
    activity log's extents go to the bitmap with the Failed state, and the disk comes
    back Outdated: the peer had every acknowledged write."""
    import threading
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY  # no FUSE file: see the module docstring
    link, peer, theirs = _connected(rep)
    results: list = []
    acked = threading.Event()
    real_pwrite = rep.store.pwrite

    def fails_after_the_ack(offset, data, durable=False):
        acked.wait(5)
        rep.store.inject_errors([(offset, len(data))])
        return real_pwrite(offset, data, durable)

    monkeypatch.setattr(rep.store, "pwrite", fails_after_the_ack)
    try:
        writer = _writer(rep, 2 * BLOCK, results)
        (w,) = _received_writes(theirs, peer, 1)
        theirs.sendall(peer.send(wire.WriteAck(w.seq)))
        deadline = time.monotonic() + 5
        while rep._pending_writes and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not rep._pending_writes, "the peer's ack was not taken in"
        acked.set()
        writer.join(5)
        assert results and isinstance(results[0], OSError), f"acknowledged: {results}"
        state, weight, bits = _saved(tmp_path)
        assert state.disk is DiskState.FAILED and state.failed_from is DiskState.OUTDATED
        assert bits[2] and weight >= EXTENT // BLOCK, "the block the peer has and we may not is unmarked"
    finally:
        _close(rep, link, theirs)


def _read_or_empty(path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def test_a_write_whose_ack_comes_after_the_disk_failed_is_recorded_for_the_checker(
        tmp_path, monkeypatch):
    """Review 29: "disk failed" records this Primary not writable, but a write whose
    local half had ended before the failure still completes when the peer's ack
    comes. The lab's checker took the volume's word and saw no writer after it: such
    a write is recorded (`write_completed`), as one completing while I/O is held."""
    import json
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("TANDEM_LAB_EVENTS", str(events))
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY  # no FUSE file: see the module docstring
    link, peer, theirs = _connected(rep)
    monkeypatch.setattr(link, "disconnect", lambda why: None)  # the acks still arrive
    results_a: list = []
    results_b: list = []
    try:
        writer_a = _writer(rep, 0, results_a)
        (wa,) = _received_writes(theirs, peer, 1)
        deadline = time.monotonic() + 5
        while rep.store.pread(0, BLOCK) != b"w" * BLOCK and time.monotonic() < deadline:
            time.sleep(0.005)
        rep.store.inject_errors([(BLOCK, BLOCK)])
        writer_b = _writer(rep, BLOCK, results_b)
        (wb,) = _received_writes(theirs, peer, 1)
        # The acks come after "disk failed" is recorded, not merely after the store
        # noticed: the metadata update in between takes a while, and a write ending
        # before the record is inside the writable interval anyway (CI, stop 34).
        while b'"disk failed"' not in _read_or_empty(events) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert rep.store.failed is not None and b'"disk failed"' in _read_or_empty(events)
        theirs.sendall(peer.send(wire.WriteAck(wa.seq)) + peer.send(wire.WriteAck(wb.seq)))
        writer_a.join(5)
        writer_b.join(5)
        assert results_a == [None] and isinstance(results_b[0], OSError), (results_a, results_b)
        rec = [json.loads(line) for line in events.read_text().splitlines()]
        failed = [e for e in rec if e["kind"] == "writable" and e.get("reason") == "disk failed"]
        done = [e for e in rec if e["kind"] == "write_completed"]
        assert failed and done and done[-1]["t"] > failed[0]["t"], rec
    finally:
        _close(rep, link, theirs)


def test_a_failed_disk_without_a_peer_keeps_what_it_was(tmp_path):
    """No peer took the writes: the disk may hold the only copy of the newest ones, so
    `attach` brings it back as it was (UpToDate), its hot extents marked for the peer.
    A fence while it is Failed (the peer promoted) makes that Outdated."""
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY
    try:
        rep.write(0, b"a" * BLOCK)
        rep.store.inject_errors([(BLOCK, BLOCK)])
        with pytest.raises(OSError):
            rep.write(BLOCK, b"b" * BLOCK)
        state, _weight, bits = _saved(tmp_path)
        assert state.disk is DiskState.FAILED and state.failed_from is DiskState.UP_TO_DATE
        assert bits[0] and bits[1]
        rep.role = Role.SECONDARY
        mark = rep.outdate()
        state, _weight, _bits = _saved(tmp_path)
        assert state.disk is DiskState.FAILED and state.failed_from is DiskState.OUTDATED
        assert mark == state.seq
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_a_metadata_write_that_fails_fails_the_disk_and_leaves_no_hot_extent(tmp_path, monkeypatch):
    """The first write into an extent logs it on disk first. That update failed (ENOSPC,
    EIO): the write failed, but the extent stayed in the log in memory, so every later
    write into it was acknowledged without the log on disk covering it (a crash then
    resyncs nothing there). Now the extent is taken back and the disk fails, as DRBD
    detaches on a meta-data I/O error: nothing more is acknowledged."""
    import errno
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY
    real_update = rep.meta.update

    def full(**changes):
        if "al_extents" in changes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_update(**changes)

    try:
        monkeypatch.setattr(rep.meta, "update", full)
        with pytest.raises(OSError):
            rep.write(0, b"x" * BLOCK)
        assert 0 not in rep.al.extents() and rep.al.in_flight() == 0
        monkeypatch.setattr(rep.meta, "update", real_update)
        with pytest.raises(OSError):
            rep.write(BLOCK, b"y" * BLOCK)  # same extent: would have looked hot
        assert rep.store.failed is not None and "metadata write failed" in str(rep.store.failed)
        assert rep.meta.state.disk is DiskState.FAILED
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_a_promotion_connected_to_a_peer_without_a_disk_starts_a_new_generation(tmp_path, monkeypatch):
    """The peer came back with its disk Failed and connected (no resync: it has no
    usable disk). A promotion over that link kept the one generation both sides had,
    so writes went to our bitmap only while the generations still matched: after the
    peer's `attach`, a connect between two Secondaries broke the tie by name and could
    make the stale disk the source of a bitmap resync."""
    rep = make_replicator(tmp_path)
    monkeypatch.setattr(rep, "_mount", lambda: None)
    link, peer, theirs = _authenticated(rep)
    try:
        failed = wire.StateExchange(role=Role.SECONDARY, disk=DiskState.FAILED,
                                    generations=GenerationIds(GEN), size=SIZE, bitmap_weight=0)
        theirs.sendall(peer.send(failed))
        deadline = time.monotonic() + 5
        while (rep.peer_status is None or link.state is not ConnectionState.CONNECTED) \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        assert link.state is ConnectionState.CONNECTED and not rep.peer_disk_usable()
        rep.promote()
        gens = rep.meta.state.generations
        assert gens.current != GEN and gens.bitmap == GEN, gens
        rep.write(0, b"p" * BLOCK)  # to the bitmap only
        assert rep.bitmap.test(0)
    finally:
        _close(rep, link, theirs)


def test_a_lease_renewed_during_a_forced_demotion_does_not_reopen_io(tmp_path, monkeypatch):
    """Torture 181:126: the agent's lease ran out, it demoted the volume by force, and the
    forced demotion waited for a write still under way; meanwhile a late renewal pushed
    a new write lease, which reopened I/O ("resumed", writable) on the Primary being
    demoted. The demotion then set Secondary without saying so again, and the checker
    saw node1 writable until its host crashed 36 s later, over node2's promotion. The
    lease lifts its own hold only, and the forced demotion says "writable false" once
    Secondary."""
    import json
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("TANDEM_LAB_EVENTS", str(events))
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY
    monkeypatch.setattr(rep, "fuse", None)
    try:
        rep.set_write_lease(time.monotonic() - 1.0)
        rep._lease_expired(rep._write_lease)  # a write noticed the lease had run out
        rep.suspend("forced demotion", timeout=0)  # the demotion's own hold
        rep.set_write_lease(time.monotonic() + 60)  # the late renewal
        assert not rep.io_open.is_set(), "a renewed lease lifted the demotion's hold"
        rep.demote(force=True)
        rec = [json.loads(line) for line in events.read_text().splitlines()]
        writable = [e for e in rec if e["kind"] == "writable"]
        assert writable and writable[-1]["writable"] is False, writable
        assert not [e for e in writable if e["writable"]], writable
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_a_suspend_that_comes_while_a_renewed_lease_reopens_io_is_not_undone(tmp_path, monkeypatch):
    """Torture 267:2: the write lease ran out and held I/O; the renewal came late, found
    no hold but the lease's own, and reopened I/O; between its check and the opening,
    the agent (which had decided to demote on the old deadline) suspended I/O. The
    renewal's opening then undid the suspension: node1 completed writes for 58 ms of
    its demotion, and its "writable" events came out in the wrong order. The check and
    the opening are one step now; the suspension lands after it and holds."""
    import json
    import threading

    from tandem.volume import replicator as replicator_module

    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("TANDEM_LAB_EVENTS", str(events))
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY
    real_event = replicator_module.lab_event
    agent = threading.Thread(target=rep.suspend, args=("demoting: the lease deadline passed",),
                             kwargs={"timeout": 0}, daemon=True)

    def event(kind, **fields):
        real_event(kind, **fields)
        if fields.get("reason") == "resumed" and not agent.is_alive():
            agent.start()  # the agent's suspend-io, in the middle of the reopening
            agent.join(0.5)  # blocked until the reopening is over, or done at once (the bug)

    monkeypatch.setattr(replicator_module, "lab_event", event)
    try:
        rep.set_write_lease(time.monotonic() - 1.0)
        rep._lease_expired(rep._write_lease)  # a write noticed the lease had run out
        rep.set_write_lease(time.monotonic() + 60)  # the late renewal
        agent.join(5)
        assert not agent.is_alive()
        assert not rep.io_open.is_set(), "the renewal undid the agent's suspension"
        assert rep.suspended_reason.startswith("demoting")
        rec = [json.loads(line) for line in events.read_text().splitlines()]
        writable = [(e["writable"], e["reason"]) for e in rec if e["kind"] == "writable"]
        assert writable[-1] == (False, "demoting: the lease deadline passed"), writable
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


class _Hook:
    """The volume's fence hook as the replicator sees it (DcsFencer in a cluster): the
    fence, and the unfence, which asks `in_sync()` after reading the record."""

    def __init__(self):
        import threading
        self.fences = 0
        self.unfenced: list[bool] = []
        self.called = threading.Event()

    def __call__(self) -> bool:
        self.fences += 1
        return True

    def unfence(self, in_sync) -> bool:
        self.unfenced.append(in_sync())
        self.called.set()
        return self.unfenced[-1]


def _fail_the_disk(rep: Replicator) -> None:
    """Every block of the backing store fails, found by a write as the receiver would
    make it (applying a replicated write)."""
    rep.store.inject_errors([(0, SIZE)])
    with pytest.raises(OSError):
        rep.store.pwrite(0, b"x" * BLOCK)


def test_a_disk_that_fails_while_the_peer_takes_every_write_has_the_peer_recorded_up_to_date(
        tmp_path, monkeypatch):
    """Torture 184:34: a fence that landed after the peer came back left it recorded
    Outdated while the leader's agent was stepping down; then the Primary's disk failed,
    the peer adopted the stale record, and no disk could be promoted although the peer
    had every write. A Primary whose disk fails while an UpToDate peer is linked has
    the peer recorded UpToDate again (the hook writes only if the record says
    otherwise); no fence runs, and in_sync() stays true: nothing completes here since."""
    rep = make_replicator(tmp_path)
    hook = _Hook()
    rep.fence_peer = hook
    rep.role = Role.PRIMARY  # no FUSE file: see the module docstring
    link, peer, theirs = _connected(rep)
    try:
        assert rep._peer_has_every_write(), "linked and in sync"
        rep.store.inject_errors([(0, SIZE)])
        with pytest.raises(OSError):
            rep.write(0, b"x" * BLOCK)
        assert hook.called.wait(5), "no unfence after the disk failed"
        assert hook.unfenced == [True] and hook.fences == 0
        deadline = time.monotonic() + 5
        while rep.link is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rep._peer_has_every_write(), "the link is gone, but the peer still has every write"
    finally:
        _close(rep, rep.link, theirs)


def test_a_secondary_unfences_too_and_tries_again_while_the_dcs_does_not_answer(tmp_path):
    """Simulation seeds 3451 and 5236: the source of a resync (demoted meanwhile) or a
    Secondary whose disk failed while its UpToDate peer was linked is as sure that the
    peer has every write as a Primary, and may be the only node left that knows; and
    the DCS may not answer at that moment (the node cut off from it): the daemon tries
    again, 0.1 s to 1 s apart, while the peer still has every write."""
    from tandem.dcs.base import DCSError

    class Flaky(_Hook):
        def unfence(self, in_sync) -> bool:
            if len(self.unfenced) < 2:
                self.unfenced.append(False)
                raise DCSError("etcd: read did not return within 0.70 s")
            return super().unfence(in_sync)

    rep = make_replicator(tmp_path)
    hook = Flaky()
    rep.fence_peer = hook
    link, peer, theirs = _connected(rep)
    try:
        assert rep.role is Role.SECONDARY and rep._peer_has_every_write()
        _fail_the_disk(rep)
        assert hook.called.wait(5), "no unfence after the disk failed"
        assert hook.unfenced == [False, False, True] and hook.fences == 0
    finally:
        _close(rep, rep.link, theirs)


def test_a_resync_target_does_not_have_every_write_of_its_source(tmp_path):
    """Torture 196:24: node2, ahead, was the bitmap-resync source of node1, whose status
    at the handshake still said UpToDate (it had not adopted the fence yet); node2's
    disk failed mid-resync. The status taken for "the peer has every write" made the
    failed disk come back Outdated and had node1 recorded UpToDate, although node1 was
    an Inconsistent target and node2 held the only copy of the newest writes: neither
    disk could be promoted. In sync means Connected, not during a resync."""
    rep = make_replicator(tmp_path)
    hook = _Hook()
    rep.fence_peer = hook
    with rep.meta_lock:
        rep.meta.update(generations=GenerationIds(GEN + 1, GEN))  # wrote since GEN
    with rep.io_lock:
        rep.bitmap.set_range(0, BLOCK)
    link, peer, theirs = _authenticated(rep)
    try:
        theirs.sendall(peer.send(status_exchange(Role.SECONDARY)))  # at GEN, "UpToDate"
        _pump(theirs, peer, lambda: peer.state is ConnectionState.WF_BITMAP_T)
        theirs.sendall(peer.send(wire.BitmapChunk(0, b"", last=True)))
        deadline = time.monotonic() + 5
        while link.state is not ConnectionState.SYNC_SOURCE and time.monotonic() < deadline:
            time.sleep(0.005)
        assert link.state is ConnectionState.SYNC_SOURCE
        assert rep.peer_status.disk is DiskState.UP_TO_DATE  # what it said at the handshake
        assert not rep._peer_has_every_write()
        _fail_the_disk(rep)
        assert rep.meta.state.failed_from is DiskState.UP_TO_DATE, "it may hold the only copy"
        assert not hook.called.wait(0.5), "the target was recorded UpToDate mid-resync"
    finally:
        _close(rep, rep.link, theirs)


def test_a_promotion_after_an_unfence_was_sent_fences_a_peer_recorded_outdated(tmp_path, monkeypatch):
    """Review 24: after a resync this Secondary sent an unfence-peer (the peer in sync)
    whose answer was lost; the link dropped; the agent, on the record it had read (the
    peer Outdated), promoted with peer_outdated and the volume skipped the fence. etcd
    may still apply the lost request, recording the peer UpToDate after writes that
    only this node has: the peer could be promoted without them. Since an unfence was
    sent, a promotion without the link fences, whatever the agent read; a fence of ours
    writes a newer revision, and only that makes "the peer is Outdated" trustworthy."""
    from tandem.dcs.base import DCSError
    monkeypatch.setattr(rep_mod, "UNFENCE_ATTEMPTS", 1)
    monkeypatch.setattr(rep_mod, "PROMOTE_HANDSHAKE_WAIT", 0.2)

    class LostAnswer(_Hook):
        def unfence(self, in_sync) -> bool:
            assert in_sync()  # read the record, in sync: the write goes out...
            self.called.set()
            raise DCSError("etcd: unfence volume db did not return within 0.70 s")  # ...unanswered

    rep = make_replicator(tmp_path)
    hook = LostAnswer()
    rep.fence_peer = hook
    link, peer, theirs = _connected(rep)
    try:
        rep._unfence_soon("resynced")
        assert hook.called.wait(5)
        link.close("the replication network is cut")
        deadline = time.monotonic() + 5
        while rep._loss_handled is not link and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hook.fences == 0, "a Secondary's link loss fences nothing"
        monkeypatch.setattr(rep, "_mount", lambda: None)  # the FUSE front end is not on this path
        rep.promote(peer_outdated=True)
        deadline = time.monotonic() + 5
        while not (hook.fences and rep.io_open.is_set()) and time.monotonic() < deadline:
            time.sleep(0.01)  # the fence thread ends by resuming I/O
        assert hook.fences == 1, "promoted on a record an unfence may have changed, without a fence"
        assert not rep._unfenced_since_fence, "our fence wrote a newer revision"
    finally:
        _close(rep, rep.link, theirs)


def test_a_disk_that_fails_without_the_peer_unfences_nothing(tmp_path):
    rep = make_replicator(tmp_path)
    hook = _Hook()
    rep.fence_peer = hook
    rep.role = Role.PRIMARY
    try:
        assert not rep._peer_has_every_write(), "no peer linked"
        rep.store.inject_errors([(0, SIZE)])
        with pytest.raises(OSError):
            rep.write(0, b"x" * BLOCK)
        assert not hook.called.wait(0.5) and not rep._peer_has_every_write()
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_a_pending_fence_is_never_undone(tmp_path):
    rep = make_replicator(tmp_path)
    rep.role = Role.PRIMARY
    link, peer, theirs = _connected(rep)
    try:
        assert rep._peer_has_every_write()
        rep._fencing = ([], [])  # a fence of a loss before this link still holds writes
        assert not rep._peer_has_every_write()
    finally:
        rep._fencing = None
        _close(rep, link, theirs)


def test_the_agents_undo_of_its_outdate_needs_the_disk_unchanged_since(tmp_path):
    """Replicator.undo_outdate (the agent's decide.adoption_to_undo): UpToDate again
    only on the mark of the outdate it undoes; any metadata write since spends the
    mark for good; a Primary or a request past its deadline (held in a paused
    daemon's socket, review 25) is refused for now, to be asked again."""
    rep = make_replicator(tmp_path)
    try:
        rep.role = Role.SECONDARY
        rep.meta.update(peer_had_all=True)
        mark = rep.outdate(unless_connected=True)
        assert isinstance(mark, int) and rep.meta.state.disk is DiskState.OUTDATED
        assert rep.outdate(unless_connected=True) is None, "already Outdated: nothing marked"
        later = time.monotonic() + 5
        assert rep.undo_outdate(mark + 1, later) == "spent"
        assert rep.undo_outdate(mark, time.monotonic() - 0.001) == "retry"
        rep.role = Role.PRIMARY
        assert rep.undo_outdate(mark, later) == "retry"
        rep.role = Role.SECONDARY
        assert rep.meta.state.disk is DiskState.OUTDATED
        assert rep.undo_outdate(mark, later) is None
        assert _saved(tmp_path)[0].disk is DiskState.UP_TO_DATE
        assert not _saved(tmp_path)[0].peer_had_all, "UpToDate again: a stale mark (review 26)"
        assert rep.undo_outdate(mark, later) == "spent", "done once: the mark is spent"
        # a metadata write in between (a link that came and went saves the bitmap) spends it
        mark = rep.outdate(unless_connected=True)
        with rep.meta_lock:
            rep.meta.persist()
        assert rep.undo_outdate(mark, later) == "spent"
        assert _saved(tmp_path)[0].disk is DiskState.OUTDATED
    finally:
        rep.meta.close()
        rep.store.close()


def test_the_peer_had_every_write_mark_outlives_a_power_cycle_and_attach(tmp_path):
    """Simulation seed 318038: node1's disk failed right after it resynced node2 while
    node1 was cut off from the DCS, so the unfence could not land; the lab heals a
    failed disk by power-cycling the host, which forgot that node2 had every write,
    and node2 had adopted the stale fence: both disks Outdated for good. The mark is
    in the metadata now: after the restart (which tries the unfence again) and after
    `attach`, until this node is Primary again."""
    from tandem.dcs.base import DCSError

    class Unreachable(_Hook):
        def unfence(self, in_sync) -> bool:
            raise DCSError("etcd: no member answered")

    rep = make_replicator(tmp_path)
    rep.fence_peer = Unreachable()
    link, peer, theirs = _connected(rep)
    try:
        assert rep.role is Role.SECONDARY and rep._peer_has_every_write()
        _fail_the_disk(rep)
        rep._running = False  # the power goes: the unfence thread gives up
    finally:
        _close(rep, rep.link, theirs)
    state = _saved(tmp_path)[0]
    assert state.disk is DiskState.FAILED and state.peer_had_all
    again = Replicator(rep.spec, SECRET)  # the host back on, the disk's cause fixed
    hook = _Hook()
    again.fence_peer = hook
    try:
        assert again._peer_has_every_write(), "failed, not attached: the mark says so"
        again.start()
        assert hook.called.wait(5), "no unfence after the restart"
        assert hook.unfenced == [True]
        again.attach()
        assert again.meta.state.disk is DiskState.OUTDATED and again._peer_has_every_write()
        again.meta.update(disk=DiskState.UP_TO_DATE)  # as an operator's forced promotion would
        again.promote(force=True)
        assert again.role is Role.PRIMARY and not again.meta.state.peer_had_all
        assert not again._peer_has_every_write(), "Primary again: it may write without the peer"
    finally:
        again.stop()
        again.role = Role.SECONDARY
        again.meta.close()
        again.store.close()


def _connect_to_an_outdated_peer(rep: Replicator, vouch: bool = False,
                                 gens: GenerationIds = GenerationIds(GEN)):
    """Authenticate, then the test's peer sends an Outdated StateExchange with `gens`;
    returns once `rep` has handled the decision."""
    handled = threading.Event()

    def on_events(link, events):
        rep._on_events(link, events)
        if any(isinstance(ev, SyncDecided) for ev in events):
            handled.set()  # its metadata updates (fdatasync each) done too

    link, peer, theirs = _authenticated(rep, on_events=on_events)
    outdated = wire.StateExchange(role=Role.SECONDARY, disk=DiskState.OUTDATED, generations=gens,
                                  size=SIZE, bitmap_weight=0, vouches_for_peer=vouch)
    theirs.sendall(peer.send(outdated))
    _pump(theirs, peer, lambda: peer.state is not ConnectionState.CONNECTING
          and peer.decision is not None)
    assert handled.wait(10), "the decision was never handled"
    return link, peer, theirs


@pytest.mark.parametrize("disk", [DiskState.FAILED, DiskState.OUTDATED])
def test_a_disk_that_failed_while_the_peer_took_every_write_vouches_for_the_outdated_peer(tmp_path, disk):
    """Simulation seeds 332150 and 911631: both disks Outdated on the same data, neither
    promotable. The side that knows the peer had every write (MetaState.peer_had_all)
    says so in its StateExchange, and both sides decide the peer is UpToDate
    (genid.apply_vouches); an Outdated voucher then has the same data as an UpToDate
    peer, so it is UpToDate too. A Failed one stays Failed (attach first), and keeps
    the unfence it owes: the daemon connects before `attach`, and clearing the mark on
    that NoSync connect left both disks Outdated (review 25c)."""
    rep = make_replicator(tmp_path)
    rep.meta.update(disk=disk, failed_from=DiskState.OUTDATED if disk is DiskState.FAILED else None,
                    peer_had_all=True)
    link, peer, theirs = _connect_to_an_outdated_peer(rep)
    try:
        assert peer.peer_status.vouches_for_peer
        assert peer.decision.decision.vouched == ("node2",), peer.decision
        assert rep.peer_disk is DiskState.UP_TO_DATE
        failed = disk is DiskState.FAILED
        assert rep.meta.state.disk is (DiskState.FAILED if failed else DiskState.UP_TO_DATE)
        # in sync and UpToDate, the mark is spent: kept, it would vouch for the peer after
        # the peer's own disk failed (review 26); still owed while this disk is Failed
        assert rep.meta.state.peer_had_all is failed, f"on {peer.decision}"
        assert rep._peer_has_every_write()
    finally:
        _close(rep, link, theirs)


def test_an_outdated_disk_the_peer_vouches_for_is_up_to_date_and_says_so(tmp_path):
    """The other half: the peer vouches for this Outdated disk on the same generation.
    It is UpToDate, and its next StateExchange tells the peer."""
    rep = make_replicator(tmp_path)
    rep.meta.update(disk=DiskState.OUTDATED)
    link, peer, theirs = _connect_to_an_outdated_peer(rep, vouch=True)
    try:
        assert not peer.peer_status.vouches_for_peer  # no peer_had_all here
        assert peer.decision.decision.vouched == ("node1",)
        assert rep.meta.state.disk is DiskState.UP_TO_DATE
        _pump(theirs, peer, lambda: peer.peer_status.disk is DiskState.UP_TO_DATE)
    finally:
        _close(rep, link, theirs)


@pytest.mark.parametrize("case", ["other generation", "no vouch"])
def test_an_outdated_disk_is_not_vouched_for_without_every_condition(tmp_path, case):
    """A vouch needs the same current generation (a side that wrote alone since has a
    new one) and the voucher's mark."""
    rep = make_replicator(tmp_path)
    rep.meta.update(disk=DiskState.OUTDATED)
    # the other generation: the peer wrote since ours, and would be the resync source
    gens = GenerationIds(0x2222, GEN) if case == "other generation" else GenerationIds(GEN)
    link, peer, theirs = _connect_to_an_outdated_peer(rep, vouch=case != "no vouch", gens=gens)
    try:
        assert not peer.decision.refused
        assert peer.decision.decision.vouched == ()
        assert rep.meta.state.disk is DiskState.OUTDATED
    finally:
        _close(rep, link, theirs)


def test_a_primary_never_vouches(tmp_path):
    """A promotion clears the mark; the role covers a promotion between setting the
    role and writing the metadata."""
    rep = make_replicator(tmp_path)
    try:
        rep.meta.update(peer_had_all=True)
        assert rep._status_msg().vouches_for_peer
        rep.role = Role.PRIMARY
        assert not rep._status_msg().vouches_for_peer
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


@pytest.mark.parametrize(("disk", "failed_from", "kept"), [
    (DiskState.UP_TO_DATE, None, False),
    (DiskState.FAILED, DiskState.UP_TO_DATE, False),
    (DiskState.OUTDATED, None, True),
    (DiskState.FAILED, DiskState.OUTDATED, True),
])
def test_a_mark_left_by_older_code_on_a_disk_in_sync_since_is_cleared_at_start(tmp_path, disk,
                                                                                failed_from, kept):
    """Review 26b: before session 26 the mark outlived this disk's own resync, and
    metadata format 3 still loads. On an UpToDate disk (or one that failed UpToDate)
    it is stale: it would vouch for a peer whose disk failed since."""
    rep = make_replicator(tmp_path)
    rep.meta.update(disk=disk, failed_from=failed_from, peer_had_all=True)
    rep.meta.close()
    rep.store.close()
    again = Replicator(rep.spec, SECRET)
    try:
        assert again.meta.state.peer_had_all is kept
        assert _saved(tmp_path)[0].peer_had_all is kept
        assert again._status_msg().vouches_for_peer is kept
    finally:
        again.meta.close()
        again.store.close()


def test_two_vouchers_spend_both_marks_and_leave_it_to_an_operator(tmp_path):
    """Review 26c: both disks failed while each saw the other in sync. The handshake
    vouches for neither, and both sides spend their mark: else a resync by name spent
    only the source's, and the next handshake vouched after all."""
    rep = make_replicator(tmp_path)
    rep.meta.update(disk=DiskState.OUTDATED, peer_had_all=True)
    link, peer, theirs = _connect_to_an_outdated_peer(rep, vouch=True)
    try:
        assert peer.peer_status.vouches_for_peer and peer.decision.decision.vouched == ()
        assert rep.meta.state.disk is DiskState.OUTDATED
        assert not rep.meta.state.peer_had_all and not rep._status_msg().vouches_for_peer
    finally:
        _close(rep, link, theirs)


def test_the_agents_promotion_is_refused_once_its_write_lease_ran_out(tmp_path):
    """Simulation seed 518200: the agent pushed its write lease, then was paused past
    it before the promotion reached the volume; the peer had taken the key and fenced
    this disk, and the late promotion made a Primary of stale data (a new generation,
    a split brain at the next connect). The volume refuses the agent's promotion (it
    carries the leader epoch) once the lease it pushed has run out; an operator's
    (no epoch) is not refused for it."""
    rep = make_replicator(tmp_path)
    try:
        rep.set_write_lease(time.monotonic() - 0.5)
        with pytest.raises(VolumeError, match="write lease ran out"):
            rep._promote_locked(False, False, epoch=4)
        assert rep.role is Role.SECONDARY
        assert rep.meta.state.generations == GenerationIds(GEN)  # nothing new, nothing written
        rep.set_write_lease(time.monotonic() + 60)
        rep._promote_locked(False, False, epoch=4)
        assert rep.role is Role.PRIMARY
        rep.role = Role.SECONDARY
        rep.set_write_lease(time.monotonic() - 0.5)
        rep._promote_locked(False, False, epoch=None)  # by hand
        assert rep.role is Role.PRIMARY
    finally:
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_a_fence_of_the_last_term_ending_as_the_next_one_begins_leaves_its_fence_alone(
        tmp_path, monkeypatch):
    """Review 28 (the product's side of simulation seed 652145): a fence thread whose
    node was demoted leaves its loop; a promotion with a fence of its own lands just
    before that thread fails its writes. It cleared the new term's fence, whose thread
    then stopped at its token check: a Primary with I/O shut and nothing to open it.
    The old thread now fails only its own fence."""
    import threading
    first, second = threading.Event(), threading.Event()
    calls: list[int] = []

    def fence() -> bool:
        calls.append(1)
        if len(calls) == 1:
            first.wait(5)
            return False  # the DCS refused: this fence retries, and meanwhile...
        second.wait(5)
        return True

    rep = _fenced_replicator(tmp_path, monkeypatch, fence)
    monkeypatch.setattr(rep, "fuse", None)
    real = rep._fail_fenced_waiters
    promoted = threading.Event()

    def promotion_first(*args):
        if threading.current_thread().name == "fence-peer" and not promoted.is_set():
            # the old fence thread, past its role check
            rep.promote()  # the next term, without the peer: a fence of its own
            real(*args)
            promoted.set()
            second.set()  # the new term's fence-peer answers now
            return
        real(*args)

    monkeypatch.setattr(rep, "_fail_fenced_waiters", promotion_first)
    try:
        rep.promote()  # no link: fence-peer (the first call hangs, then fails)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.005)
        rep.demote(force=True)  # the term ends while its fence is still trying
        first.set()
        assert promoted.wait(5), "the old fence thread never left its loop"
        assert rep.role is Role.PRIMARY
        assert rep.io_open.wait(5), "the new term's I/O stayed shut"
        assert rep.role is Role.PRIMARY and rep._fencing is None and len(calls) == 2
        rep.write(0, b"w" * BLOCK)
    finally:
        first.set()
        second.set()
        rep.role = Role.SECONDARY
        rep.meta.close()
        rep.store.close()


def test_the_listener_hands_over_a_link_only_when_one_is_wanted(tmp_path):
    """`_claim_link`, what the listener asks when a pending link authenticated first:
    not while the last link's receiver still applies what it had (one receiver at a
    time), nor StandAlone, nor with a link up, nor once stopping; otherwise it becomes
    the link, with nothing of the old link's peer status."""
    rep = make_replicator(tmp_path)
    pairs = [_tcp_pair() for _ in range(3)]
    release = threading.Event()
    in_batch = threading.Event()

    def busy(link, events):
        in_batch.set()
        release.wait(10)

    old = Link(pairs[0][0], rep._peer_config(True), busy, lambda link, reason: None)
    new = Link(pairs[1][0], rep._peer_config(True), rep._on_events, rep._on_link_closed)
    other = Link(pairs[2][0], rep._peer_config(True), rep._on_events, rep._on_link_closed)
    try:
        old.start()  # its receiver takes the peer's Hello and stays in the handler
        peer = PeerConnection(PeerConfig(node="node2", secret=LINK_SECRET, nonce=os.urandom(16),
                                         initiator=False), now=time.monotonic())
        pairs[0][1].sendall(peer.data_to_send())
        # (a Hello makes no event; a Disconnect does, and the receiver stays in `busy`)
        pairs[0][1].sendall(peer.send(wire.Disconnect("bye")))
        assert in_batch.wait(5)
        old.close("test: closed by another thread")
        rep._last_link = old
        assert old.receiving and not rep._claim_link(new), "claimed beside a running receiver"
        release.set()
        old.join(5)
        assert not old.receiving
        rep.standalone_reason = "disconnected by the operator"
        assert not rep._claim_link(new), "claimed while StandAlone"
        rep.standalone_reason = ""
        rep.peer_status = status_exchange(Role.SECONDARY)  # the old link's
        assert rep._claim_link(new) and rep.link is new and rep._last_link is new
        assert rep.peer_status is None
        assert not rep._claim_link(other), "a second link claimed the slot"
        rep.link = None
        rep._running = False
        assert not rep._claim_link(other), "claimed while stopping"
    finally:
        release.set()
        for link in (old, new, other):
            link.close("test over")
        for a, b in pairs:
            a.close()
            b.close()
        rep.meta.close()
        rep.store.close()


def test_protocol_errors_are_logged_at_most_once_a_second(caplog, monkeypatch):
    """Connections from the peer's address that send garbage must not flood the log:
    one warning a second, and the next one counts those left out."""
    import logging

    from tandem.volume import link as link_module
    clock = [1000.0]
    monkeypatch.setattr(link_module.time, "monotonic", lambda: clock[0])
    limited = link_module._RateLimitedWarning()
    caplog.set_level(logging.DEBUG, logger="tandem.volume.link")
    for i in range(5):
        limited.log("replication link: %s; closing", f"protocol error {i}")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["replication link: protocol error 0; closing"]
    clock[0] += 1.5
    limited.log("replication link: %s; closing", "protocol error 5")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[-1] == ("replication link: protocol error 5; closing (4 more like it"
                            " since the last one, not logged)")
