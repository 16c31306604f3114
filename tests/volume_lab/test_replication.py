"""Protocol C, resync, verify, split brain, fencing and disk errors on a real
two-node volume (FUSE file, daemons in lab hosts, the replication network)."""

from __future__ import annotations

import errno
import json
import os
import random
import threading
import time

import pytest

from tests.volume_lab.harness import pwrite_sync, read_range

MiB = 1 << 20


def test_initial_sync_and_verify_identical(fresh):
    vp = fresh
    dev = vp.device("node1")
    payload = os.urandom(3 * MiB)
    pwrite_sync(dev, 5 * MiB, payload)
    # Protocol C: once fsync returned, the bytes are on node2's backing file too.
    assert read_range(vp.backing("node2"), 5 * MiB, len(payload)) == payload
    res = vp.tandem("node1", "volume", "verify", "db", "--json")
    assert '"out_of_sync_blocks": 0' in res.stdout
    st = vp.status("node1")
    assert st["role"] == "Primary" and st["stats"]["replicated_writes"] > 0
    assert vp.status("node2")["role"] == "Secondary"
    # The Secondary exposes no device.
    assert not vp.device("node2").exists()


def test_verify_after_an_aborted_verify(fresh):
    """Torture campaign seed 5: a verify cut short by a link failure left every later
    verify stuck at 0 bytes (its unanswered requests' window permits were gone)."""
    from tandem.volume import control
    vp = fresh
    vp.wait_connected_uptodate()
    sock = vp.lab.host_dir("node1") / "run" / "volume-db.sock"
    vp.lab.faults.pause("node2", "volume-db")  # the peer stops answering mid-verify
    try:
        with pytest.raises(control.ControlError) as first:  # straight away: within the ping timeout
            control.call(sock, "verify", timeout=60)
    finally:
        vp.lab.faults.resume("node2", "volume-db")
    assert "verify aborted" in str(first.value)
    vp.wait_connected_uptodate()
    again = vp.tandem("node1", "volume", "verify", "db", "--json")
    assert '"out_of_sync_blocks": 0' in again.stdout


def test_resync_copies_only_what_changed(fresh):
    vp = fresh
    dev = vp.device("node1")
    fd = os.open(dev, os.O_RDWR)
    os.fsync(fd)
    os.close(fd)
    before = vp.status("node2")["stats"]["resync_bytes_received"]
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node1")["peer"]["connection"] != "Connected", 10, "link down")
    rng = random.Random(7)
    blocks = sorted(rng.sample(range(0, 64 * MiB // 4096), 100))
    for b in blocks:
        pwrite_sync(dev, b * 4096, os.urandom(4096))
    changed = len(blocks) * 4096
    st = vp.status("node1")
    assert st["out_of_sync_bytes"] >= changed
    vp.lab.faults.heal()
    vp.wait_connected_uptodate()
    resynced = vp.status("node2")["stats"]["resync_bytes_received"] - before
    # Only the changed blocks (and at most a few grains written just before the cut).
    assert changed <= resynced <= changed + 256 * 1024, (changed, resynced)
    res = vp.tandem("node1", "volume", "verify", "db", "--json")
    assert '"out_of_sync_blocks": 0' in res.stdout


def test_an_interrupted_resync_resumes_without_a_full_sync(fresh):
    """The link breaks halfway through a bitmap resync (the target is Inconsistent by
    then): both sides notice within the ping timeout (they hung until TCP gave up: the
    ticker waited for the send lock of a sender stuck on a full socket), and the next
    connect resumes from the bitmaps instead of copying the whole device again (it
    did: a full sync of 64 MiB for 8 MiB of changes)."""
    from tandem.volume import control
    vp = fresh
    sock = {h: vp.lab.host_dir(h) / "run" / "volume-db.sock" for h in ("node1", "node2")}

    def status(h: str) -> dict:  # the control socket: a CLI process per poll is too slow here
        return control.call(sock[h], "status", timeout=10)

    dev = vp.device("node1")
    before = status("node2")["stats"]["resync_bytes_received"]
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: status("node1")["peer"]["connection"] != "Connected", 10, "link down")
    rng = random.Random(11)
    chunk = 256 * 1024
    for c in sorted(rng.sample(range(64 * MiB // chunk), 32)):
        pwrite_sync(dev, c * chunk, os.urandom(chunk))
    changed = 32 * chunk
    dead = ("Timeout", "Connecting", "NetworkFailure", "Unconnected")
    try:
        vp.lab.faults.slow("node2", "4mbit", net="replication")  # ~16 s for the 8 MiB
        vp.lab.faults.heal()
        vp.wait(lambda: status("node2")["stats"]["resync_bytes_received"] - before > MiB, 30,
                "the resync under way", interval=0.05)
        vp.lab.faults.partition(["node1"], ["node2"], net="replication")
        cut = time.monotonic()
        vp.wait(lambda: all(status(h)["peer"]["connection"] in dead for h in ("node1", "node2")),
                10, "both sides see the link down", interval=0.05)
        noticed = time.monotonic() - cut
        st = status("node2")
        assert st["disk"] == "Inconsistent", st["disk"]  # cut halfway, as intended
        assert st["stats"]["resync_bytes_received"] - before < changed
        assert noticed < 5, noticed  # ping timeout 0.5 s, and polling on a busy machine
    finally:
        vp.lab.faults.unslow("node2")
        vp.lab.faults.heal()
    vp.wait_connected_uptodate()
    resynced = status("node2")["stats"]["resync_bytes_received"] - before
    # the source's bitmap (all of it again) and nothing else: far from the 64 MiB device
    assert changed <= resynced <= 2 * changed + 256 * 1024, (changed, resynced)
    res = vp.tandem("node1", "volume", "verify", "db", "--json")
    assert '"out_of_sync_blocks": 0' in res.stdout


def test_an_interrupted_full_sync_resumes_where_it_was(fresh):
    """Torture 151:37: a replaced disk's full sync over a link that dropped every few
    seconds began again from the first byte at each connect (the source's bitmap
    stayed all set until the end) and never finished. The source now clears what it
    has sent; what the target has not applied stays in the target's own bitmap."""
    from tandem.volume import control
    vp = fresh
    sock = {h: vp.lab.host_dir(h) / "run" / "volume-db.sock" for h in ("node1", "node2")}

    def received() -> int:
        return control.call(sock["node2"], "status", timeout=10)["stats"]["resync_bytes_received"]

    size = 64 * MiB
    dead = ("Timeout", "Connecting", "NetworkFailure", "Unconnected", "StandAlone")
    before = received()
    try:
        vp.lab.faults.slow("node2", "40mbit", net="replication")  # ~14 s for the 64 MiB
        vp.tandem("node2", "volume", "invalidate", "db")
        vp.wait(lambda: received() - before > 24 * MiB, 60, "the full sync under way", interval=0.05)
        vp.lab.faults.partition(["node1"], ["node2"], net="replication")
        vp.wait(lambda: all(control.call(sock[h], "status", timeout=10)["peer"]["connection"] in dead
                            for h in ("node1", "node2")), 10, "both sides see the link down", interval=0.05)
        at_cut = received() - before
        assert at_cut < size, "the sync finished before the cut"
    finally:
        vp.lab.faults.unslow("node2")
        vp.lab.faults.heal()
    vp.wait_connected_uptodate(timeout=120)
    total = received() - before
    # Before: at_cut + the whole 64 MiB again. Now: the whole once, plus at most what
    # was sent and not applied when the link went (one answered slice of 16 MiB).
    assert total <= size + 20 * MiB, (at_cut >> 20, total >> 20)
    res = vp.tandem("node1", "volume", "verify", "db", "--json")
    assert '"out_of_sync_blocks": 0' in res.stdout


def test_verify_finds_and_marks_differences(fresh):
    vp = fresh
    # Corrupt node2's copy behind tandem's back: verify must notice exactly it.
    with open(vp.backing("node2"), "r+b") as f:
        f.seek(10 * MiB + 8192)
        f.write(b"\xff" * 4096)
        f.flush()
        os.fsync(f.fileno())
    proc = vp.tandem("node1", "volume", "verify", "db", check=False)
    assert proc.returncode == 1
    assert "1 blocks out of sync" in proc.stdout
    assert vp.status("node1")["out_of_sync_bytes"] == 4096
    # A reconnect resyncs the marked block from the Primary.
    vp.tandem("node1", "volume", "connect", "db")
    vp.wait_connected_uptodate()
    vp.wait(lambda: vp.status("node1")["out_of_sync_bytes"] == 0, 10, "bitmap cleared")
    assert read_range(vp.backing("node2"), 10 * MiB + 8192, 4096) == \
        read_range(vp.backing("node1"), 10 * MiB + 8192, 4096)
    assert "0 blocks out of sync" in vp.tandem("node1", "volume", "verify", "db").stdout


def test_writes_continue_while_peer_is_away_and_crashed_secondary_resyncs(fresh):
    vp = fresh
    dev = vp.device("node1")
    vp.lab.faults.crash("node2")
    t0 = time.monotonic()
    pwrite_sync(dev, 0, b"a" * 8192)
    assert time.monotonic() - t0 < 5, "the Primary must keep writing without its peer"
    vp.wait(lambda: vp.status("node1")["peer"]["connection"] == "Connecting", 5, "peer lost")
    assert vp.status("node1")["out_of_sync_bytes"] >= 8192
    vp.lab.faults.restart("node2")
    vp.start("node2")
    vp.wait_connected_uptodate()
    assert read_range(vp.backing("node2"), 0, 8192) == b"a" * 8192


def test_crashed_primary_loses_no_acknowledged_write_and_resyncs_on_return(fresh):
    vp = fresh
    dev = vp.device("node1")
    acked: dict[int, bytes] = {}
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            data = os.urandom(4096)
            try:
                pwrite_sync(dev, (i % 4096) * 4096, data)
            except OSError:
                return
            acked[(i % 4096) * 4096] = data
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.0)
    vp.lab.faults.crash("node1")
    stop.set()
    t.join(10)
    assert len(acked) > 20
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 5, "node2 sees loss")
    vp.tandem("node2", "volume", "primary", "db")
    dev2 = vp.device("node2")
    for off, data in acked.items():
        assert read_range(dev2, off, 4096) == data, f"acknowledged write at {off} lost"
    # node2 keeps writing, then node1 comes back as Secondary and catches up.
    pwrite_sync(dev2, 20 * MiB, b"n" * 4096)
    vp.lab.faults.restart("node1")
    vp.start("node1")
    vp.wait_connected_uptodate()
    assert vp.status("node1")["role"] == "Secondary"
    assert "0 blocks out of sync" in vp.tandem("node2", "volume", "verify", "db").stdout
    assert read_range(vp.backing("node1"), 20 * MiB, 4096) == b"n" * 4096
    # Hand the Primary role back for the following tests.
    vp.tandem("node2", "volume", "secondary", "db")


def test_split_brain_is_detected_and_refused_until_resolved(fresh):
    vp = fresh
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    vp.tandem("node2", "volume", "primary", "db")
    pwrite_sync(vp.device("node1"), 0, b"1" * 4096)
    pwrite_sync(vp.device("node2"), 4096, b"2" * 4096)
    vp.tandem("node2", "volume", "secondary", "db")
    vp.lab.faults.heal()
    vp.wait(lambda: vp.status("node1")["peer"]["connection"] == "StandAlone", 15, "split brain")
    st = vp.status("node1")
    assert "split brain" in st["peer"]["standalone_reason"]
    time.sleep(1.0)
    assert vp.status("node1")["peer"]["connection"] == "StandAlone", "must stay refused"
    assert read_range(vp.backing("node2"), 4096, 4096) == b"2" * 4096, "nothing merged"
    vp.tandem("node2", "volume", "discard-my-data", "db")
    vp.tandem("node1", "volume", "connect", "db")
    vp.wait_connected_uptodate()
    assert read_range(vp.backing("node2"), 0, 4096) == b"1" * 4096
    assert read_range(vp.backing("node2"), 4096, 4096) == read_range(vp.backing("node1"), 4096, 4096)
    assert "0 blocks out of sync" in vp.tandem("node1", "volume", "verify", "db").stdout


def _link_port(vp) -> tuple[str, int]:
    # node2 listens (node1 < node2 dials); a stranger dials in from the witness.
    return vp.lab.address("node2", "replication"), 7789


def _stranger(vp, payload: bytes, host: str = "node1") -> bytes:
    """Send `payload` to node2's replication port from `host` (by default from the peer's
    own address, the only one the listener lets in) and return what came back."""
    code = (
        "import socket,sys\n"
        "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
        "s.sendall(bytes.fromhex(sys.argv[3]))\n"
        "data=b''\n"
        "try:\n"
        "    while True:\n"
        "        c=s.recv(65536)\n"
        "        if not c: break\n"
        "        data+=c\n"
        "except Exception: pass\n"
        "print(data.hex())\n")
    import sys
    addr, port = _link_port(vp)
    out = vp.lab.run(host, [sys.executable, "-c", code, addr, str(port), payload.hex()],
                     timeout=20).stdout.strip()
    return bytes.fromhex(out)


def test_malformed_frames_and_wrong_secret_are_rejected(fresh):
    vp = fresh
    # Take node1 off the link so node2's port is free for strangers.
    vp.tandem("node1", "volume", "disconnect", "db")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    before = vp.backing("node2").read_bytes()[:8 * MiB]
    from tandem.volume import wire
    from tandem.volume.auth import Handshake
    garbage = b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64)
    _stranger(vp, garbage)
    oversized = bytearray(wire.encode(wire.Ping(1)))
    oversized[8:12] = (1 << 30).to_bytes(4, "big")
    _stranger(vp, bytes(oversized))
    hs = Handshake(secret=b"not-the-secret-0123456789", node="node1", nonce=os.urandom(16),
                   initiator=True)
    _stranger(vp, wire.encode(hs.hello()))
    # anyone but the peer is turned away before a byte is read (it would hold the one
    # link slot through a silent handshake and keep the peer out)
    assert _stranger(vp, wire.encode(hs.hello()), host="witness") == b""
    log = vp.log("node2")
    assert "refused a replication connection from" in log
    assert "protocol error" in log
    assert "not-the-secret" not in log
    assert vp.backing("node2").read_bytes()[:8 * MiB] == before
    vp.tandem("node1", "volume", "connect", "db")
    vp.wait_connected_uptodate()


def test_fence_peer_suspends_writes_until_it_succeeds(pair, healed, tmp_path):
    from tests.volume_lab.harness import VolumePair
    flag = pair.lab.spec.dir / "fence-ok"
    calls = pair.lab.spec.dir / "fence-calls"
    flag.unlink(missing_ok=True)
    calls.unlink(missing_ok=True)
    cmd = f"echo $TANDEM_PEER >> {calls}; test -e {flag}"
    vp = VolumePair(pair.lab, fence_peer_command=cmd)
    vp.fresh("node1")
    dev = vp.device("node1")
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    done = threading.Event()

    def write():
        pwrite_sync(dev, 0, b"f" * 4096)
        done.set()

    t = threading.Thread(target=write)
    t.start()
    # The loss is noticed (ping timeout) and the command run (a shell) in their own time.
    vp.wait(lambda: calls.exists() and calls.read_text().split()
            and "fencing" in vp.status("node1").get("suspended_reason", ""), 20, "the fence to start")
    time.sleep(0.5)  # it keeps failing meanwhile
    assert not done.is_set(), "a write must not complete before the peer is fenced"
    st = vp.status("node1")
    assert st["suspended"] and "fencing" in st["suspended_reason"]
    assert calls.read_text().split()[0] == "node2"
    flag.touch()
    assert done.wait(10)
    t.join()
    assert vp.status("node1")["peer"]["disk"] == "Outdated"
    vp.lab.faults.heal()
    vp.wait_connected_uptodate()
    # Leave the module's default (no fencing) config in place for later tests.
    vp.teardown()
    from tandem.lab.clusterconf import write_cluster_config
    write_cluster_config(pair.lab, volume_size="64MiB")


def test_a_fence_that_lands_after_the_peer_returned_resumes_io(pair, healed, tmp_path):
    """Torture campaign seed 5: the fence kept failing, the write lease lapsed and
    was renewed meanwhile, the link came back and resynced; when the fence finally
    succeeded, I/O stayed suspended for good and the connected peer was reported
    Outdated. Now the held write completes and the peer's state is the link's."""
    from tandem.volume import control
    from tests.volume_lab.harness import VolumePair
    flag = pair.lab.spec.dir / "fence-ok"
    flag.unlink(missing_ok=True)
    vp = VolumePair(pair.lab, fence_peer_command=f"test -e {flag}")
    try:
        vp.fresh("node1")
        dev = vp.device("node1")
        sock = vp.lab.host_dir("node1") / "run" / "volume-db.sock"
        control.call(sock, "write-lease", until=time.monotonic() + 60)
        vp.lab.faults.partition(["node1"], ["node2"], net="replication")
        done = threading.Event()

        def write():
            pwrite_sync(dev, 0, b"g" * 4096)
            done.set()

        t = threading.Thread(target=write)
        t.start()
        vp.wait(lambda: "fencing" in (vp.status("node1").get("suspended_reason") or ""), 20,
                "the fence to start")
        control.call(sock, "write-lease", until=time.monotonic() + 0.3)  # lapses during the fence
        time.sleep(1.0)
        control.call(sock, "write-lease", until=time.monotonic() + 60)  # the agent renews it
        vp.lab.faults.heal()
        vp.wait(lambda: vp.status("node1")["peer"].get("connection") == "Connected", 30,
                "the link to come back")
        assert not done.is_set()
        flag.touch()
        assert done.wait(15), "the held write never completed: I/O stayed suspended"
        t.join()
        vp.wait_connected_uptodate()
        st = vp.status("node1")
        assert not st["suspended"], st
        assert st["peer"]["disk"] == "UpToDate", st
        pwrite_sync(dev, 4096, b"h" * 4096)  # and I/O flows
    finally:
        vp.teardown()
        from tandem.lab.clusterconf import write_cluster_config
        write_cluster_config(pair.lab, volume_size="64MiB")


def test_backing_store_eio_is_never_acknowledged(fresh):
    vp = fresh
    dev = vp.device("node1")
    vp.tandem("node1", "volume", "status", "db")
    from tandem.volume import control
    sock = vp.lab.host_dir("node1") / "run" / "volume-db.sock"
    # The write lease the agent pushes: valid well past this test's end.
    control.call(sock, "write-lease", until=time.monotonic() + 600)
    t0 = time.monotonic()
    control.call(sock, "inject-eio", ranges=[[8 * MiB, 4096]])
    with pytest.raises(OSError) as err:
        pwrite_sync(dev, 8 * MiB, b"x" * 4096)
    assert err.value.errno == errno.EIO
    st = vp.status("node1")
    assert st["disk"] == "Failed" and "injected" in st["disk_error"]
    # Once Failed, nothing more is acknowledged, anywhere on the disk.
    with pytest.raises(OSError):
        pwrite_sync(dev, 0, b"y" * 4096)
    # ... so for the lab's checker this Primary stops being a writer at once, not
    # when its write lease ends (torture 41:27 counted it as a second writer).
    ended = [e for e in vp.lab.events.read("writable")
             if e["t"] > t0 and e["node"] == "node1" and not e["writable"]]
    assert [e["reason"] for e in ended] == ["disk failed"], ended
    vp.lab.faults.crash("node1")
    vp.lab.faults.restart("node1")


def test_promotion_refuses_a_disk_that_is_not_up_to_date(fresh):
    vp = fresh
    vp.tandem("node1", "volume", "secondary", "db")
    vp.tandem("node2", "volume", "outdate", "db")
    assert vp.status("node2")["disk"] == "Outdated"
    proc = vp.tandem("node2", "volume", "primary", "db", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to promote: local disk is Outdated" in lines[0]
    assert vp.status("node2")["role"] == "Secondary"
    # The operator may override, knowingly.
    vp.tandem("node2", "volume", "primary", "db", "--force")
    assert vp.status("node2")["role"] == "Primary"
    vp.tandem("node2", "volume", "secondary", "db")


def _dirty_pages(path, offset: int, length: int) -> int:
    """Pages of `path` in [offset, offset+length) that are dirty or under writeback
    in the host's page cache (cachestat(2), Linux 6.5+): data not yet durable."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rng = (ctypes.c_uint64 * 2)(offset, length)
    out = (ctypes.c_uint64 * 5)()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(451, fd, rng, out, 0) != 0:  # __NR_cachestat
            raise OSError(ctypes.get_errno(), "cachestat")
    finally:
        os.close(fd)
    return int(out[1] + out[2])


def test_write_through_volume_acknowledges_only_durable_writes(fresh, tmp_path):
    """The default cache mode: a write the application saw complete is on stable
    storage on both nodes, with no fsync at all (the loop device above it is marked
    write-through and sends none)."""
    vp = fresh
    assert vp.status("node1").get("write_through") is True
    # The instrument can fail: a plain buffered write on the same file system is dirty.
    control = vp.data_dir("node2") / "control.bin"
    fd = os.open(control, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"c" * 8 * 4096, 0)
        assert _dirty_pages(control, 0, 8 * 4096) > 0
    finally:
        os.close(fd)
        control.unlink()
    import mmap
    buf = mmap.mmap(-1, MiB)
    buf.write(os.urandom(MiB))
    flushes = vp.status("node1")["stats"]["flushes"]
    fd = os.open(vp.device("node1"), os.O_WRONLY | os.O_DIRECT)
    try:
        for i in range(8):
            off = (3 + i * 5) * MiB
            os.pwrite(fd, memoryview(buf)[: (i + 1) * 64 * 1024], off)
            for h in ("node2", "node1"):  # checked right after the write returned
                assert _dirty_pages(vp.backing(h), off, (i + 1) * 64 * 1024) == 0, (h, i)
    finally:
        os.close(fd)
    assert vp.status("node1")["stats"]["flushes"] == flushes  # no fsync was needed
    assert read_range(vp.backing("node2"), 3 * MiB, 64 * 1024) == bytes(buf[: 64 * 1024])


def test_a_disk_filled_from_an_outdated_peer_is_outdated_too(fresh):
    """Torture 25:15: node1, Primary, wrote alone after its peer was outdated; then
    node1's disk failed and was replaced. The new disk was filled by a full sync from
    the Outdated node2 and called UpToDate, so node1 was promoted on data missing
    acknowledged writes. A resync target is only as current as its source."""
    vp = fresh
    dev = vp.device("node1")
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    pwrite_sync(dev, 0, b"n" * 4096)  # only node1 has it
    vp.tandem("node2", "volume", "outdate", "db")
    assert vp.status("node2")["disk"] == "Outdated"
    vp.stop("node1")
    vp.create("node1")  # a new, empty disk
    vp.start("node1")
    vp.lab.faults.heal()
    vp.wait(lambda: vp.status("node1")["peer"]["connection"] == "Connected"
            and vp.status("node1")["disk"] != "Inconsistent", 60, "the full sync from node2")
    assert vp.status("node1")["disk"] == "Outdated"
    assert vp.status("node2")["peer"]["disk"] == "Outdated"
    proc = vp.tandem("node1", "volume", "primary", "db", check=False)
    assert proc.returncode != 0 and "refusing to promote: local disk is Outdated" in proc.stderr
    assert vp.status("node1")["role"] == "Secondary"


def test_a_failed_disk_with_the_newest_data_is_attached_again(fresh):
    """The other half of torture 25:15: when the peer is Outdated, the failed disk
    holds the only copy of the newest writes; after a restart `attach` takes it back
    in the state it failed in, and it resyncs the peer."""
    from tandem.volume import control
    vp = fresh
    dev = vp.device("node1")
    proc = vp.tandem("node1", "volume", "attach", "db", check=False)
    assert proc.returncode != 0 and "nothing to attach: the disk is UpToDate" in proc.stderr
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    pwrite_sync(dev, 0, b"n" * 4096)  # only node1 has it
    vp.tandem("node2", "volume", "outdate", "db")
    sock = vp.lab.host_dir("node1") / "run" / "volume-db.sock"
    control.call(sock, "inject-eio", ranges=[[0, 64 * MiB]])
    with pytest.raises(OSError):
        pwrite_sync(dev, 4096, b"x" * 4096)
    assert vp.status("node1")["disk"] == "Failed"
    proc = vp.tandem("node1", "volume", "attach", "db", check=False)
    assert proc.returncode != 0 and "while Primary" in proc.stderr
    vp.lab.faults.crash("node1")  # power cycle: the error was transient
    vp.lab.faults.restart("node1")
    vp.start("node1")
    assert vp.status("node1")["disk"] == "Failed"  # remembered across the restart
    vp.tandem("node1", "volume", "attach", "db")
    assert vp.status("node1")["disk"] == "UpToDate"
    vp.lab.faults.heal()
    vp.wait_connected_uptodate()
    vp.tandem("node1", "volume", "primary", "db")
    assert read_range(vp.device("node1"), 0, 4096) == b"n" * 4096
    res = json.loads(vp.tandem("node1", "volume", "verify", "db", "--json").stdout)
    assert res["out_of_sync_blocks"] == 0


def test_a_primary_whose_disk_fails_does_not_fence_its_peer(pair, healed):
    """Torture 26:39: the Primary's disk failed, which drops the link, and the Primary
    then fenced its peer: the one disk holding every acknowledged write was marked
    Outdated, and the service waited for the failed disk to be replaced."""
    from tandem.lab.clusterconf import write_cluster_config
    from tandem.volume import control
    from tests.volume_lab.harness import VolumePair
    calls = pair.lab.spec.dir / "fence-calls"
    calls.unlink(missing_ok=True)
    vp = VolumePair(pair.lab, fence_peer_command=f"echo $TANDEM_PEER >> {calls}")
    try:
        vp.fresh("node1")  # its forced promotion may fence before the first connect
        dev = vp.device("node1")
        pwrite_sync(dev, 0, b"a" * 4096)
        calls.unlink(missing_ok=True)
        sock = vp.lab.host_dir("node1") / "run" / "volume-db.sock"
        control.call(sock, "inject-eio", ranges=[[0, 64 * MiB]])
        with pytest.raises(OSError):
            pwrite_sync(dev, 4096, b"x" * 4096)
        vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
        time.sleep(1.0)  # a fence would have run by now
        assert not calls.exists(), f"the peer was fenced: {vp.log('node1')[-3000:]}"
        assert vp.status("node1")["disk"] == "Failed"
        assert vp.status("node1")["peer"]["disk"] != "Outdated"
        vp.tandem("node1", "volume", "secondary", "db", "--force", check=False)
        vp.tandem("node2", "volume", "primary", "db")  # no force needed: UpToDate
        assert read_range(vp.device("node2"), 0, 4096) == b"a" * 4096
    finally:
        vp.teardown()
        write_cluster_config(pair.lab, volume_size="64MiB")


def test_an_outdated_disk_that_reconnects_on_the_same_data_is_up_to_date_again(fresh):
    """The agent marks its disk Outdated when the DCS records a fence (torture 36:25).
    If nothing was written since (the leader made no new generation), the connect
    finds the same data: the disk must become UpToDate again, or the node is never
    eligible (8b5a9bb, reverted: two mgmt-lab tests waited 180 s for node2)."""
    vp = fresh
    vp.tandem("node1", "volume", "secondary", "db")  # nobody writes: the same generation
    # While the link is up, the agent's outdate is refused: the link keeps the disk current.
    st = json.loads(vp.tandem("node2", "volume", "outdate", "db", "--unless-connected",
                              "--json").stdout)
    assert st["disk"] == "UpToDate"
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    st = json.loads(vp.tandem("node2", "volume", "outdate", "db", "--unless-connected",
                              "--json").stdout)
    assert st["disk"] == "Outdated"
    seen = len(vp.log("node2"))  # the log goes on across tests
    vp.lab.faults.heal()
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] == "Connected", 30, "reconnect")
    vp.wait(lambda: vp.status("node2")["disk"] == "UpToDate"
            and vp.status("node1")["peer"]["disk"] == "UpToDate", 10,
            "node2 UpToDate again, and node1 told so")
    assert "disk Outdated -> UpToDate: the peer is UpToDate with the same data" in vp.log("node2")[seen:]


def test_a_disk_that_failed_while_its_peer_took_every_write_vouches_for_it(fresh):
    """Simulation seeds 332150 and 911631, on real daemons: node1's disk fails while
    node2 is in sync, node2 then takes a stale fence (the agent adopting an old record),
    and node1 comes back Outdated from a power cycle and `attach`: two Outdated disks on
    the same data, which no rule made UpToDate before session 26. node1 vouches for
    node2 at the handshake (genid.apply_vouches): both UpToDate, node2 promotable
    without force, with every write."""
    from tandem.volume import control
    vp = fresh
    dev = vp.device("node1")
    pwrite_sync(dev, 0, b"v" * 4096)
    control.call(vp.lab.host_dir("node1") / "run" / "volume-db.sock", "inject-eio",
                 ranges=[[0, 64 * MiB]])
    with pytest.raises(OSError):
        pwrite_sync(dev, 4096, b"x" * 4096)
    assert vp.status("node1")["disk"] == "Failed"
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    sock = vp.lab.host_dir("node1") / "run" / "volume-db.sock"
    control.call(sock, "secondary", force=True)  # as the agent demotes a failed Primary
    st = json.loads(vp.tandem("node2", "volume", "outdate", "db", "--unless-connected",
                              "--json").stdout)
    assert st["disk"] == "Outdated"  # the stale fence
    vp.lab.faults.crash("node1")  # power cycle: the error was transient
    vp.lab.faults.restart("node1")
    vp.start("node1")
    vp.tandem("node1", "volume", "attach", "db")
    assert vp.status("node1")["disk"] == "Outdated"  # the peer had every write
    seen = len(vp.log("node2"))
    vp.lab.faults.heal()
    vp.wait_connected_uptodate(60)
    assert "vouched for it at connect" in vp.log("node2")[seen:]
    vp.tandem("node2", "volume", "primary", "db")  # no force: UpToDate
    assert read_range(vp.device("node2"), 0, 4096) == b"v" * 4096
    res = json.loads(vp.tandem("node2", "volume", "verify", "db", "--json").stdout)
    assert res["out_of_sync_blocks"] == 0


def test_the_agents_undo_of_an_adopted_fence_checks_the_disk_is_unchanged(fresh):
    """`undo-outdate` (the agent's decide.adoption_to_undo: a newer record calls the
    disk UpToDate) makes the disk UpToDate only with no link, only on the mark of the
    outdate it undoes (the metadata unchanged since), and never past its deadline (a
    request held in a paused daemon's socket, review 25). Bad arguments: one clear error."""
    from tandem.volume import control
    from tandem.volume.control import ControlError

    vp = fresh
    sock = vp.lab.host_dir("node2") / "run" / "volume-db.sock"

    def undo(mark, until=None):
        until = time.monotonic() + 5 if until is None else until
        return control.call(sock, "undo-outdate", mark=mark, until=until)

    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    st = control.call(sock, "outdate", unless_connected=True)
    assert st["disk"] == "Outdated" and st["marked"]
    again = control.call(sock, "outdate", unless_connected=True)  # already Outdated: no mark
    assert not again["marked"] and again["mark"] is None
    mark = st["mark"]
    assert undo(mark + 1)["refused"] == "spent" and undo(mark - 1)["refused"] == "spent"
    late = undo(mark, until=time.monotonic() - 0.01)
    assert not late["undone"] and late["refused"] == "retry", "past its deadline"
    for bad in ({"mark": None, "until": time.monotonic() + 5}, {"mark": True, "until": 1e12},
                {"mark": "1", "until": 1e12}):
        with pytest.raises(ControlError, match="undo-outdate: 'mark' must be"):
            control.call(sock, "undo-outdate", **bad)
    with pytest.raises(ControlError, match="undo-outdate: 'until' must be"):
        control.call(sock, "undo-outdate", mark=mark, until="soon")
    assert vp.status("node2")["disk"] == "Outdated"
    seen = len(vp.log("node2"))
    done = undo(mark)
    assert done["undone"] and done["disk"] == "UpToDate"
    assert "the agent undid a fence it had adopted" in vp.log("node2")[seen:]
    assert undo(mark)["refused"] == "spent", "the undo wrote the metadata: its mark is spent"
    # With a link, the disk is the link's business: the agent's outdate marks nothing,
    # and an undo is refused (an operator's outdate here).
    vp.lab.faults.heal()
    vp.wait_connected_uptodate(60)
    st = control.call(sock, "outdate", unless_connected=True)
    assert st["disk"] == "UpToDate" and st["marked"] is False and st["mark"] is None
    st = control.call(sock, "outdate")
    assert st["disk"] == "Outdated" and st["peer"]["connection"] == "Connected"
    assert undo(st["mark"])["refused"] == "retry"
    assert vp.status("node2")["disk"] == "Outdated"


def test_an_outdated_disk_behind_its_peer_stays_outdated_until_resynced(fresh):
    """The other side of the rule above: a fenced disk whose Primary wrote since is
    behind, and only the resync (not the connect) makes it UpToDate."""
    vp = fresh
    dev = vp.device("node1")
    vp.lab.faults.partition(["node1"], ["node2"], net="replication")
    vp.wait(lambda: vp.status("node2")["peer"]["connection"] != "Connected", 10, "link down")
    vp.tandem("node2", "volume", "outdate", "db", "--unless-connected")
    pwrite_sync(dev, 8192, b"w" * 4096)  # only node1 has it
    assert vp.status("node2")["disk"] == "Outdated"
    seen = len(vp.log("node2"))  # the log goes on across tests
    vp.lab.faults.heal()
    vp.wait_connected_uptodate(60)
    assert "the peer is UpToDate with the same data" not in vp.log("node2")[seen:]
    assert "resync" in vp.log("node2")[seen:].lower()
    assert read_range(vp.backing("node2"), 8192, 4096) == b"w" * 4096


def test_only_the_agents_own_promotion_skips_the_fence(pair, healed):
    """`VolumeResource.peer_outdated` is what the DCS said of the peer when the agent
    promoted. A later start of the same resource (the monitor restarting a volume
    daemon that died) must fence: the peer may have resynced and been recorded
    UpToDate since, and a volume told "peer Outdated" writes without it. Every start
    first awaits `before_start` (the agent pushes its write lease there)."""
    import asyncio

    from tandem.cluster.volume_resource import VolumeResource, VolumeResourceConfig
    from tandem.volume import control
    from tests.volume_lab.harness import VolumePair
    calls = pair.lab.spec.dir / "fence-calls"
    calls.unlink(missing_ok=True)
    vp = VolumePair(pair.lab, fence_peer_command=f"echo $TANDEM_PEER >> {calls}")
    try:
        vp.fresh("node1")
        vp.tandem("node1", "volume", "secondary", "db")
        vp.stop("node2")
        vp.wait(lambda: vp.status("node1")["peer"]["connection"] != "Connected", 10, "the link down")
        calls.unlink(missing_ok=True)
        sock = vp.lab.host_dir("node1") / "run" / "volume-db.sock"
        res = VolumeResource(VolumeResourceConfig(name="volume", resource="db", control_socket=sock))
        pushed: list[str] = []

        async def push_lease() -> None:
            pushed.append(vp.status("node1")["role"])  # before the promotion
            control.call(sock, "write-lease", until=time.monotonic() + 60)

        res.before_start = push_lease
        res.peer_outdated = True  # the agent's promotion, on a record saying so
        first = asyncio.run(res.start())
        assert first.ok, first.sentence
        assert not calls.exists(), "the agent's own promotion on a peer recorded Outdated fenced"
        assert asyncio.run(res.stop()).ok
        vp.start("node2")  # the peer comes back and resyncs: UpToDate again
        vp.wait_connected_uptodate()
        vp.stop("node2")
        vp.wait(lambda: vp.status("node1")["peer"]["connection"] != "Connected", 10, "the link down")
        second = asyncio.run(res.start())  # nobody said anything of the peer this time
        assert second.ok, second.sentence
        vp.wait(lambda: calls.exists(), 10, "the fence-peer command")
        assert calls.read_text().split() == ["node2"]
        assert pushed == ["Secondary", "Secondary"]
    finally:
        vp.teardown()
        from tandem.lab.clusterconf import write_cluster_config
        write_cluster_config(pair.lab, volume_size="64MiB")


def test_a_primary_whose_write_lease_stays_run_out_demotes_itself(fresh):
    """A dead or hung agent left its Primary with the I/O held for good, and the peer,
    holding the leader key by then, could not promote while connected to a Primary.
    After force_secondary_after (10 s) of a lease left run out, the volume demotes
    itself: the held write fails, and the peer promotes with every acknowledged write.
    In maintenance (the agent's `force_secondary: false`) the Primary only holds its
    I/O, however long; a renewal starts the count again."""
    from tandem.volume import control
    vp = fresh
    dev = vp.device("node1")
    socks = {h: vp.lab.host_dir(h) / "run" / "volume-db.sock" for h in ("node1", "node2")}
    control.call(socks["node1"], "write-lease", until=time.monotonic() + 60)
    pwrite_sync(dev, 0, b"a" * 4096)  # acknowledged: must survive
    # Maintenance: run out for longer than force_secondary_after, and still Primary.
    control.call(socks["node1"], "write-lease", until=time.monotonic() + 0.3,
                 force_secondary=False)
    time.sleep(10.8)
    st = vp.status("node1")
    assert st["role"] == "Primary" and st["suspended"], st
    assert "forced_secondary" not in st
    # Renewed (maintenance over): the count starts again from the next lapse, not
    # from the one that the renewal ended (10.8 s ago by then).
    control.call(socks["node1"], "write-lease", until=time.monotonic() + 60)
    pwrite_sync(dev, 4096, b"b" * 4096)
    out = time.monotonic() + 0.3
    control.call(socks["node1"], "write-lease", until=out)
    result: list[BaseException | None] = []

    def held_write() -> None:
        try:
            pwrite_sync(dev, 8192, b"c" * 4096)
            result.append(None)
        except OSError as e:
            result.append(e)

    time.sleep(0.5)
    t = threading.Thread(target=held_write, daemon=True)
    t.start()
    vp.wait(lambda: vp.status("node1")["role"] == "Secondary", 20, "node1 to demote itself")
    demoted = time.monotonic()
    # Counted from when the daemon saw the lapse (a tick after `out`).
    assert 10.0 <= demoted - out <= 13.0, demoted - out
    t.join(10)
    assert result and isinstance(result[0], OSError), f"a write after the lease completed: {result}"
    st = vp.status("node1")
    assert "write lease ran out" in st["forced_secondary"], st
    forced = [e for e in vp.lab.events.read("forced_secondary") if e["node"] == "node1"]
    assert forced and forced[-1]["seen_for"] >= 10.0, forced
    assert "demoting to Secondary by force" in vp.log("node1")
    # The peer, connected to a Secondary now, promotes as the agent would (no force).
    vp.wait(lambda: vp.status("node2")["peer"]["role"] == "Secondary", 10, "node2 to see it")
    vp.tandem("node2", "volume", "primary", "db")
    dev2 = vp.device("node2")
    assert read_range(dev2, 0, 8192) == b"a" * 4096 + b"b" * 4096
    vp.tandem("node2", "volume", "secondary", "db")
