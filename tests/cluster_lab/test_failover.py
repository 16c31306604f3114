"""The agent moves the database service safely: crash, isolation, replication
cut, switchover, standby, maintenance; proven with the writer's log and the
lab's monotonic event log."""

from __future__ import annotations

import contextlib
import time

from tandem.lab.checker import lost_writes, overlapping_writers, write_gap
from tandem.lab.writer import read_log


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def stored_ids(stack) -> set[str]:
    return {r[0] for r in stack.query("SELECT id FROM tandem.acked")}


def run_writer_through(stack, fault, settle: float = 2.0, name: str = "writer"):
    """Start a writer, apply `fault()` after it has written, wait for service
    again, stop the writer; return (acks, t_fault)."""
    out = stack.start_writer(name)
    stack.wait(lambda: out.exists() and len(out.read_text().splitlines()) > 50, 30, "writer running")
    t_fault = monotonic()
    fault()
    return out, t_fault


def finish_writer(stack, out, name: str = "writer"):
    time.sleep(1.0)
    stack.lab.stop("client", name)
    acks, errors = read_log(str(out))
    return acks, errors


def assert_no_loss_no_overlap(stack, acks):
    assert acks, "the writer acknowledged nothing"
    lost = lost_writes(acks, stored_ids(stack))
    assert lost == [], f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
    overlaps = overlapping_writers(stack.lab.events.read())
    assert overlaps == [], f"two writable nodes at once: {overlaps}"


def test_the_lab_reads_what_the_operator_sees(healthy):
    """The lab reads status in its own process (etcd's JSON gateway, the volume's
    control socket) instead of starting the CLI: both must say the same."""
    import json
    stack = healthy
    for _ in range(5):  # a member record may be republished between the two reads
        cli = json.loads(stack.tandem("witness", "status", "--json").stdout)
        if stack.status() == cli:
            break
    assert stack.status() == cli
    assert cli["leader"]["node"] == "node1" and len(cli["nodes"]) == 2
    for host in ("node1", "node2"):
        cli_vol = json.loads(stack.tandem(host, "volume", "status", "db", "--json").stdout)
        ours = stack.volume_status(host)
        for key in ("resource", "node", "role", "disk", "size", "cache", "generations"):
            assert ours.get(key) == cli_vol.get(key), key
        assert ours["peer"]["connection"] == cli_vol["peer"]["connection"] == "Connected"
    assert stack.db_ping()


def test_crash_of_the_primary_moves_the_service_and_loses_nothing(healthy):
    stack = healthy
    out, t_fault = run_writer_through(stack, lambda: stack.lab.faults.crash("node1"))
    assert stack.wait_service(30) == "node2"
    acks, _ = finish_writer(stack, out)
    assert_no_loss_no_overlap(stack, acks)
    gap = write_gap(acks, t_fault)
    assert gap is not None, "no write acknowledged after the failover"
    st = stack.status()
    assert st["leader"]["node"] == "node2"
    assert st["last_failover"]["node"] == "node2"
    # InnoDB recovered cleanly from the crash image on the volume.
    check = stack.query("CHECK TABLE tandem.acked EXTENDED")
    assert check[-1][2:] == ("status", "OK"), check
    # The crashed node returns as a replica and catches up.
    stack.restart_host("node1")
    stack.wait(lambda: next(n for n in stack.status()["nodes"] if n["node"] == "node1")["disk"]
               == "UpToDate", 90, "node1 resynced")
    assert stack.leader() == "node2"


def _replace_disk(stack, host: str) -> None:
    """What an operator does with a failed disk: power off, a new disk, power on; the
    full sync from the peer fills it."""
    if host not in stack.lab.read_state()["down"]:
        stack.lab.faults.crash(host)
    for name in ("db.img", "db.meta"):
        (stack.lab.host_dir(host) / "data" / name).unlink(missing_ok=True)
    stack.tandem(host, "volume", "create", "db", timeout=60)
    stack.restart_host(host)
    stack.wait(lambda: stack.status()["volumes"][0]["disks"].get(host) == "UpToDate", 120,
               f"{host}'s new disk synced and recorded UpToDate")


def test_a_failed_disk_on_the_primary_moves_the_service_at_once_and_loses_nothing(healthy):
    """Torture 41:27: the leader whose disk failed stepped down gracefully, and the
    graceful stop hung on MariaDB over the dead disk while the key stayed held. A
    failed disk has nothing left to flush: the leader demotes at once."""
    from tandem.volume import control
    stack = healthy
    sock = stack.lab.host_dir("node1") / "run" / "volume-db.sock"

    def eio() -> None:
        size = control.call(sock, "status", timeout=5)["size"]
        control.call(sock, "inject-eio", ranges=[[0, size]], timeout=5)

    out, t_fault = run_writer_through(stack, eio)
    try:
        stack.wait(lambda: stack.leader() == "node2", 30, "node2 leader")
        assert stack.wait_service(30) == "node2"
        acks, _ = finish_writer(stack, out)
        assert_no_loss_no_overlap(stack, acks)
        assert write_gap(acks, t_fault) is not None, "no write acknowledged after the failover"
        demotions = [e for e in stack.lab.events.read("demote_start")
                     if e["t"] > t_fault and e["node"] == "node1"]
        assert demotions and "at once" in demotions[0]["reason"], demotions
        assert "Failed" in demotions[0]["reason"], demotions
        ended = [e for e in stack.lab.events.read("writable")
                 if e["t"] > t_fault and e["node"] == "node1" and not e["writable"]]
        assert ended and ended[0]["reason"] == "disk failed", ended
    finally:
        with contextlib.suppress(Exception):
            stack.lab.stop("client", "writer")
        _replace_disk(stack, "node1")


def test_fence_peer_command_records_the_peer_outdated_only_for_the_leader(healthy):
    """`tandem fence-peer db`, the command form of the volume's fence-peer hook
    (fence_peer_command; the lab's volumes use the daemon's own, fence_peer = "dcs")."""
    stack = healthy
    refused = stack.tandem("node2", "fence-peer", "db", check=False)
    assert refused.returncode == 1
    assert "node2 does not hold the leader key; refusing" in refused.stderr, refused.stderr
    assert stack.status()["volumes"][0]["disks"]["node1"] == "UpToDate"
    done = stack.tandem("node1", "fence-peer", "db")
    assert done.stdout.strip() == "node2: Outdated for db"
    # The leader records a connected, in-sync peer UpToDate again by itself.
    stack.wait(lambda: stack.status()["volumes"][0]["disks"]["node2"] == "UpToDate", 30,
               "node2 recorded UpToDate again by the leader")


def test_crash_of_the_secondary_keeps_the_service(healthy):
    stack = healthy
    out, t_fault = run_writer_through(stack, lambda: stack.lab.faults.crash("node2"))
    time.sleep(2.0)
    acks, _ = finish_writer(stack, out)
    assert stack.leader() == "node1"

    def node2_seen_down():
        st = stack.status()
        node2 = next(n for n in st["nodes"] if n["node"] == "node2")
        return not node2["online"] and st["volumes"][0]["disks"]["node2"] == "Outdated"

    # Offline once etcd expires its lease, Outdated once node1's fence lands.
    stack.wait(node2_seen_down, 15, "node2 offline and recorded Outdated")
    assert stack.leader() == "node1"
    gap = write_gap(acks, t_fault)
    print(f"\nwrite gap after the secondary's crash: {gap} s")
    assert gap is not None and gap < 3.0, gap
    assert_no_loss_no_overlap(stack, acks)
    stack.restart_host("node2")
    stack.wait(lambda: stack.status()["volumes"][0]["disks"]["node2"] == "UpToDate", 90,
               "node2 resynced and recorded UpToDate")


def test_primary_cut_off_from_the_dcs_majority_stops_writing_before_the_other_promotes(healthy):
    stack = healthy
    lab = stack.lab
    # node1 keeps its replication link and the client; loses etcd's majority.
    out, t_fault = run_writer_through(
        stack, lambda: lab.faults.partition(["node1"], ["node2", "witness"], net="public"))
    stack.wait(lambda: stack.leader() == "node2", 30, "node2 to lead")
    lab.faults.heal()
    stack.wait_service(30)
    acks, _ = finish_writer(stack, out)
    events = lab.events.read()
    ends = [e["t"] for e in events if e["kind"] == "writable" and e["node"] == "node1"
            and not e["writable"] and e["t"] > t_fault]
    starts = [e["t"] for e in events if e["kind"] == "writable" and e["node"] == "node2"
              and e["writable"] and e["t"] > t_fault]
    assert ends and starts, (ends, starts)
    assert ends[0] < starts[0], f"node1 stopped at {ends[0]}, node2 started at {starts[0]}"
    assert_no_loss_no_overlap(stack, acks)


def test_split_partition_heals_by_itself_the_side_that_lost_the_key_is_discarded(healthy):
    """node1 (leader) and the client | node2 and the witness, on every network: node1
    loses the lease and demotes with its last writes held by the fence step (never
    acknowledged), node2 takes over. After the heal both disks changed since they
    parted: the lab cluster's after_split_brain = discard-least-recent-primary makes
    node1 (told by its agent that it lost the key) the resync target, no operator."""
    stack = healthy
    lab = stack.lab
    out, _ = run_writer_through(
        stack, lambda: lab.faults.partition(["node1", "client"], ["node2", "witness"]))
    stack.wait(lambda: stack.leader() == "node2", 30, "node2 to lead")
    time.sleep(1.0)
    lab.faults.heal()
    assert stack.wait_service(60) == "node2"
    acks, _ = finish_writer(stack, out)

    def redundant() -> bool:
        vols = [stack.volume_status(h) for h in ("node1", "node2")]
        return all(v["disk"] == "UpToDate" and v["peer"]["connection"] == "Connected"
                   for v in vols)

    stack.wait(redundant, 60, "both disks UpToDate and connected again, without an operator")
    # Whether node1 wrote locally after the cut (a split brain) depends on timing;
    # when it did, the policy resolved it, never an operator.
    log1 = (lab.host_dir("node1") / "log" / "volume-db.log").read_text()
    assert "cannot decide" not in log1
    assert_no_loss_no_overlap(stack, acks)


def test_a_hung_monitor_does_not_hold_up_the_demotion(healthy):
    """Torture 9:15 and 10:4: the leader's volume held every write (its write lease
    had expired), so the filesystem probe hung for its whole 10 s monitor timeout;
    the HA loop awaited that monitor and demoted only 22 s after the DCS came back.
    Here the leader's I/O is suspended (the probe hangs), then the leader is cut off
    from the DCS: its demotion must start at the lease deadline, not after the
    monitor gives up."""
    from tandem.volume import control
    stack = healthy
    lab = stack.lab
    sock = lab.host_dir("node1") / "run" / "volume-db.sock"
    control.call(sock, "suspend-io", timeout=5, reason="test: hold the I/O so the filesystem probe hangs")
    try:
        time.sleep(3.0)  # a monitor tick (every 1 s) is now waiting on the held filesystem
        t_cut = monotonic()
        lab.faults.partition(["node1"], ["node2", "witness"], net="public")
        stack.wait(lambda: any(e["kind"] == "demote_start" and e["node"] == "node1" and e["t"] > t_cut
                               for e in lab.events.read()), 30, "node1 to start demoting")
        started = min(e["t"] for e in lab.events.read()
                      if e["kind"] == "demote_start" and e["node"] == "node1" and e["t"] > t_cut)
        # lease TTL 1 s; the monitor timeout is 10 s
        assert started - t_cut < 3.0, f"node1 began demoting {started - t_cut:.1f} s after the cut"
    finally:
        lab.faults.heal()
        with contextlib.suppress(Exception):
            control.call(sock, "resume-io", timeout=5)
    stack.wait_service(60)


def test_a_promotion_that_cannot_finish_is_abandoned_when_the_lease_runs_out(healthy):
    """Torture 40:38 and 51:44: the new leader's volume went Primary, then the DCS
    was lost; with the write lease gone the volume completes no I/O, and MariaDB's
    start waited for its 120 s timeout while the agent, stuck in the start, neither
    demoted nor let anybody else in. The agent must give up the start once its
    lease runs out, demote, and take part again after the heal."""
    from tandem.volume import control
    stack = healthy
    lab = stack.lab
    sock = lab.host_dir("node2") / "run" / "volume-db.sock"
    t0 = monotonic()
    lab.faults.crash("node1")

    def promoted_volume() -> bool:
        return any(e["node"] == "node2" and e["writable"] and e["t"] > t0
                   for e in lab.events.read("writable"))

    try:
        deadline = time.monotonic() + 30
        while not promoted_volume():  # the start goes on: mount, MariaDB
            assert time.monotonic() < deadline, "node2's volume never became Primary"
            time.sleep(0.005)
        # Hold the I/O as an expired write lease would, and cut node2 off the DCS.
        control.call(sock, "suspend-io", timeout=5, reason="test: the start cannot finish")
        t_cut = monotonic()
        lab.faults.partition(["node2"], ["witness", "client"], net="public")
        stack.wait(lambda: any(e["node"] == "node2" and e["t"] > t0 for e in
                               lab.events.read("promote_abandoned") + lab.events.read("promoted")),
                   30, "node2's start to end or be abandoned")
        ended = [e for e in lab.events.read() if e["t"] > t0 and e.get("node") == "node2"
                 and e["kind"] in ("promote_abandoned", "promoted")]
        assert ended[0]["kind"] == "promote_abandoned", f"the start completed: {ended[0]}"
        assert ended[0]["t"] - t_cut < 5.0, f"abandoned {ended[0]['t'] - t_cut:.1f} s after the cut"
        stack.wait(lambda: stack.volume_status("node2")["role"] == "Secondary", 15, "node2 demoted")
        # The volume's forced demotion comes first, not after the cancelled start
        # unwound: a mount blocked in the held I/O took the cancel's whole 5 s reap
        # (CI, stop 19) until the demotion failed that I/O.
        forced = [e for e in lab.events.read("writable") if e["node"] == "node2" and e["t"] > t_cut
                  and e.get("reason") == "forced demotion"]
        assert forced and forced[0]["t"] - ended[0]["t"] < 2.0, (forced, ended[0])
    finally:
        lab.faults.heal()
        with contextlib.suppress(Exception):
            control.call(sock, "resume-io", timeout=5)
    assert stack.wait_service(60) == "node2"  # it takes part again after the heal
    stack.restart_host("node1")


def test_replication_cut_outdates_the_peer_which_then_must_not_promote(healthy):
    stack = healthy
    lab = stack.lab
    out, _ = run_writer_through(
        stack, lambda: lab.faults.partition(["node1"], ["node2"], net="replication"))
    stack.wait(lambda: stack.status()["volumes"][0]["disks"]["node2"] == "Outdated", 15,
               "node2 recorded Outdated")
    # node2's agent marks the disk itself Outdated, so no resync from it passes for
    # current (torture 36:25)
    stack.wait(lambda: stack.volume_status("node2")["disk"] == "Outdated", 10,
               "node2's own disk Outdated")
    time.sleep(1.0)
    acks_before = len(read_log(str(out))[0])
    assert stack.leader() == "node1"
    # Writes continue on node1 without its peer.
    stack.wait(lambda: len(read_log(str(out))[0]) > acks_before + 20, 10, "writes continue")
    lab.faults.crash("node1")
    time.sleep(4.0)
    st = stack.status()
    assert st["leader"] is None, "the Outdated node must not take over"
    node2 = next(n for n in st["nodes"] if n["node"] == "node2")
    assert any("Outdated" in why for why in node2["not_promotable_because"])
    acks, _ = finish_writer(stack, out)
    # node1 returns: it holds the newest data. It resyncs node2 and then records it
    # UpToDate again (unfence-peer, whatever its role): either node may take the service,
    # and nothing is lost.
    lab.faults.heal()
    stack.restart_host("node1")
    assert stack.wait_service(60) in ("node1", "node2")
    stack.wait(lambda: set(stack.status()["volumes"][0]["disks"].values()) == {"UpToDate"}, 30,
               "both disks recorded UpToDate")
    assert_no_loss_no_overlap(stack, acks)


def test_switchover_round_trip(healthy):
    stack = healthy
    out = stack.start_writer("sw")
    stack.wait(lambda: out.exists() and len(out.read_text().splitlines()) > 50, 30, "writer")
    t0 = monotonic()
    res = stack.tandem("witness", "switchover", "--to", "node2", "--force", timeout=60)
    assert "after: leader node2" in res.stdout and "node1 demoted" in res.stdout
    assert stack.wait_service(30) == "node2"
    gap1 = write_gap(read_log(str(out))[0], t0)
    t1 = monotonic()
    stack.tandem("witness", "switchover", "--to", "node1", "--force", timeout=60)
    assert stack.wait_service(30) == "node1"
    acks, _ = finish_writer(stack, out, "sw")
    gap2 = write_gap(acks, t1)
    assert gap1 is not None and gap2 is not None
    assert_no_loss_no_overlap(stack, acks)
    assert [h["node"] for h in stack.status()["last_failover"] and
            [stack.status()["last_failover"]]][-1] == "node1"


def test_standby_moves_everything_off_a_node(healthy):
    stack = healthy
    # Not the leader while no other node could take over: the database would stop.
    stack.tandem("witness", "standby", "node2")
    try:
        proc = stack.tandem("witness", "standby", "node1", check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr
        assert "node1 runs the service and no other node is eligible" in lines[0]
        assert "--force" in lines[0]
        assert not next(n for n in stack.status()["nodes"] if n["node"] == "node1")["standby"]
    finally:
        stack.tandem("witness", "unstandby", "node2")
    stack.wait(lambda: next(n for n in stack.status()["nodes"] if n["node"] == "node2")["eligible"],
               30, "node2 eligible again")
    stack.tandem("witness", "standby", "node1")
    stack.wait(lambda: stack.leader() == "node2", 30, "service on node2")
    stack.wait_service(30)
    time.sleep(1.0)
    assert stack.leader() == "node2"
    st = stack.status()
    node1 = next(n for n in st["nodes"] if n["node"] == "node1")
    assert node1["standby"] and "in standby" in node1["not_promotable_because"]
    stack.tandem("witness", "unstandby", "node1")


def test_maintenance_leaves_resources_alone(healthy):
    stack = healthy
    stack.tandem("witness", "maintenance", "on")
    time.sleep(0.5)
    # A switchover is refused: the agents would not act on it, and it would fire,
    # unannounced, when maintenance ends (review 35).
    proc = stack.tandem("witness", "switchover", "--to", "node2", "--force", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "maintenance mode is on: the agents would not act on a switchover" in lines[0]
    assert stack.status()["switchover"] is None
    # One left pending (its CLI timed out before the leader acted) is withdrawn when
    # maintenance goes on, and said so: it would fire, unannounced, when it ends.
    import asyncio

    from tandem.cli.cluster_cmd import _dcs
    from tandem.dcs.view import Switchover

    async def leave_a_request() -> None:
        dcs = _dcs(stack.cluster_config())
        try:
            assert await dcs.set_switchover(Switchover(leader="node1", candidate="node2"))
        finally:
            await dcs.close()
    asyncio.run(leave_a_request())
    assert stack.status()["switchover"] == {"from": "node1", "to": "node2"}
    out = stack.tandem("witness", "maintenance", "on").stdout.strip()
    assert out == "maintenance on (the pending switchover to node2 was withdrawn)", out
    assert stack.status()["switchover"] is None
    # A standby order is ignored in maintenance.
    stack.tandem("witness", "standby", "node1")
    time.sleep(3.0)
    assert stack.leader() == "node1"
    assert stack.db_ping()
    st = stack.status()
    assert st["maintenance"]
    node1 = next(n for n in st["nodes"] if n["node"] == "node1")
    assert "maintenance" in node1["last_action"]
    stack.tandem("witness", "unstandby", "node1")
    stack.tandem("witness", "maintenance", "off")
    time.sleep(1.0)
    assert stack.leader() == "node1"


def test_bad_cli_input_gives_one_clear_line(healthy):
    stack = healthy
    for args, expected in [
        (("switchover", "--to", "node9", "--force"), "--to node9: not a node of this cluster"),
        (("switchover", "--to", "node1", "--force"), "node1 is already the leader"),
        (("maintenance", "maybe"), "maintenance 'maybe': say `on` or `off`"),
        (("standby", "nodeX"), "nodeX: not a node of this cluster"),
        (("cleanup", "nodeX"), "nodeX: not a node of this cluster"),
        (("failover", "--to", "node2"), "node1 is the leader: use `tandem switchover` instead"),
    ]:
        proc = stack.tandem("witness", *args, check=False)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, proc.stderr)


def test_cleanup_reaches_the_agent_of_that_node_once(healthy):
    """`tandem cleanup NODE` (Pacemaker's cleanup, after the operator fixed what kept
    failing): NODE's agent forgets its failures once per request; the other agent
    ignores it. (What forgetting does: tests/cluster_decide/test_penalty.py.)"""
    stack = healthy
    lab = stack.lab

    def cleanups(node: str, since: float) -> list[dict]:
        return [e for e in lab.events.read()
                if e["kind"] == "cleanup" and e["node"] == node and e["t"] > since]

    t0 = monotonic()
    proc = stack.tandem("witness", "cleanup", "node2")
    assert proc.stdout.strip() == "node2: failures cleared (its agent acts on it within a cycle)"
    stack.wait(lambda: len(cleanups("node2", t0)) == 1, 15, "node2's agent to take the cleanup")
    stack.tandem("witness", "cleanup", "node2")
    stack.wait(lambda: len(cleanups("node2", t0)) == 2, 15, "node2's agent to take the second cleanup")
    time.sleep(1.0)  # several agent cycles: no request is taken twice, node1 took none
    assert len(cleanups("node2", t0)) == 2 and cleanups("node1", t0) == []
    assert all(r["healthy"] for r in stack.status()["nodes"])


def _mariadb_log(stack, host: str):
    return stack.lab.host_dir(host) / "run" / "mariadb" / "mariadb" / "mariadbd.log"


def _log_since(path, offset: int) -> str:
    return path.read_bytes()[offset:].decode(errors="replace") if path.exists() else ""


def _size(path) -> int:
    return path.stat().st_size if path.exists() else 0


def _node1_back_as_replica(stack) -> None:
    if not stack.lab.supervisor("node1").running("agent"):
        stack.start_agent("node1")
    stack.wait(lambda: next(n for n in stack.status()["nodes"] if n["node"] == "node1")["disk"]
               == "UpToDate", 90, "node1 back as an in-sync replica")


def test_stopping_the_primarys_agent_hands_over_after_a_clean_shutdown(healthy):
    """`systemctl stop` of the primary's agent: the group stops under a lease still
    renewed and the key is released. The lease task was stopped first: the volume's
    write lease ran out under MariaDB's clean shutdown, which hung in the held I/O
    until a forced demotion failed it (no clean shutdown, InnoDB crash recovery on
    node2), and node2's promotion was refused all the while (review 23: 40-60 s)."""
    import json
    import os
    import signal
    import threading
    stack = healthy
    logs = {h: _mariadb_log(stack, h) for h in ("node1", "node2")}
    seen = {h: _size(p) for h, p in logs.items()}
    ref = json.loads((logs["node1"].parent / "state.json").read_text())
    stopper = threading.Thread(target=stack.lab.stop, args=("node1", "agent"), kwargs={"timeout": 90})

    def stop_agent_while_mariadb_is_slow() -> None:
        # A shutdown that takes 2 s (a big buffer pool to flush), longer than the write
        # lease the last renewal pushed (0.7 s): mariadbd takes the SIGTERM only then.
        os.kill(ref["pid"], signal.SIGSTOP)
        try:
            stopper.start()
            time.sleep(2.0)
        finally:
            os.kill(ref["pid"], signal.SIGCONT)

    out, t_fault = run_writer_through(stack, stop_agent_while_mariadb_is_slow)
    assert stack.wait_service(30) == "node2"
    stopper.join(timeout=120)
    acks, _ = finish_writer(stack, out)
    assert_no_loss_no_overlap(stack, acks)
    said = _log_since(logs["node1"], seen["node1"])
    assert "Shutdown complete" in said, f"node1's MariaDB did not shut down cleanly: {said[-1500:]}"
    assert "crash recovery" not in _log_since(logs["node2"], seen["node2"])
    gap = write_gap(acks, t_fault)
    assert gap is not None, "no write acknowledged after the handover"
    _node1_back_as_replica(stack)


def test_a_restarted_agent_demotes_the_primary_its_crashed_self_left_at_once(healthy):
    """The primary's agent dies (kill -9) and comes back after node2 took the key: its
    volume is still Primary (its write lease ran out: the I/O is held) and MariaDB
    still runs. The new agent stopped them gracefully, which hung in the held I/O while
    node2's promotion was refused ("the peer's volume is still Primary"), ~40 s; now
    it demotes the volume by force first, as any demotion does."""
    import signal
    stack = healthy
    out, t_fault = run_writer_through(stack, lambda: stack.lab.supervisor("node1").signal("agent",
                                                                                        signal.SIGKILL))
    stack.wait(lambda: stack.leader() == "node2", 30, "node2 to take the key")
    assert stack.volume_status("node1")["role"] == "Primary", "the scenario needs the leftover Primary"
    stack.lab.stop("node1", "agent")  # reap the killed one's record
    stack.start_agent("node1")
    # The graceful stop cannot end before MariaDB's stop gives up on the SIGTERM (15 s,
    # then SIGKILL, which the held I/O also outlasts); the forced demotion is the
    # agent's first act.
    stack.wait(lambda: stack.volume_status("node1")["role"] == "Secondary", 12,
               "node1's volume demoted by the restarted agent")
    assert stack.wait_service(30) == "node2"
    acks, _ = finish_writer(stack, out)
    assert_no_loss_no_overlap(stack, acks)
    assert stack.volume_status("node1")["role"] == "Secondary"
    _node1_back_as_replica(stack)


def test_the_primarys_agent_dead_for_good_the_peer_serves_after_force_secondary_after(healthy):
    """The primary's agent dies (kill -9) and nothing restarts it (no watchdog, no
    fencing agent). node2 took the key, but its promotion was refused for as long as
    node1's volume stayed Primary ("the peer's volume is still Primary"): no
    database until an operator came. Now node1's volume, its write lease run out for
    force_secondary_after (10 s), demotes itself, and node2 serves with every
    acknowledged write."""
    import signal
    stack = healthy
    t0 = monotonic()
    out, t_fault = run_writer_through(stack, lambda: stack.lab.supervisor("node1").signal(
        "agent", signal.SIGKILL))
    stack.wait(lambda: stack.leader() == "node2", 30, "node2 to take the key")
    assert stack.volume_status("node1")["role"] == "Primary", "the scenario needs the leftover Primary"
    assert stack.wait_service(40) == "node2"
    forced = [e for e in stack.lab.events.read("forced_secondary") if e["t"] > t0]
    assert [e["node"] for e in forced] == ["node1"], forced
    assert forced[0]["seen_for"] >= 10.0, forced
    st = stack.volume_status("node1")
    assert st["role"] == "Secondary" and "write lease ran out" in st["forced_secondary"], st
    acks, _ = finish_writer(stack, out)
    assert_no_loss_no_overlap(stack, acks)
    gap = write_gap(acks, t_fault)
    assert gap is not None, "no write acknowledged after the handover"
    stack.lab.stop("node1", "agent")  # reap the killed one's record
    _node1_back_as_replica(stack)
    # The agent, back, stops what ran on the volume before it demoted itself (MariaDB on
    # EIO, ext4 read-only over a loop device whose file is gone): the service can come
    # back to node1 (it could not: MariaDB's start failed on the stale mount).
    said = (stack.lab.host_dir("node1") / "log" / "agent.log").read_text()
    assert "what ran on the volume before it demoted itself" in said
    stack.tandem("witness", "switchover", "--to", "node1", "--force", timeout=60)
    assert stack.wait_service(30) == "node1"


def test_a_restarted_agent_that_takes_the_key_at_once_clears_what_its_volume_left(healthy):
    """node2 down, node1's agent killed: its volume demotes itself after
    force_secondary_after, with MariaDB and the ext4 mount left on it. The agent comes
    back and, node2 being down, takes the key at once (it never follows): the group's
    start failed on the stale, busy mount, and its rollback left the old MariaDB
    running, again and again (review 35c). Now what ran there is stopped first."""
    import signal
    stack = healthy
    stack.lab.faults.crash("node2")  # nobody else may take over
    try:
        stack.wait(lambda: stack.db_ping(), 30, "the service on node1 without node2")
        stack.lab.supervisor("node1").signal("agent", signal.SIGKILL)
        stack.wait(lambda: stack.volume_status("node1")["role"] == "Secondary", 40,
                   "node1's volume to demote itself")
        assert "write lease ran out" in stack.volume_status("node1")["forced_secondary"]
        stack.lab.stop("node1", "agent")  # reap the killed one's record
        stack.start_agent("node1")
        assert stack.wait_service(60) == "node1"
        said = (stack.lab.host_dir("node1") / "log" / "agent.log").read_text()
        assert "what ran on the volume before it demoted itself" in said
        assert stack.db_ping()
    finally:
        stack.restart_host("node2")


def test_a_volume_daemon_paused_for_a_moment_moves_nothing(healthy):
    """The primary's volume daemon stops answering for 1.8 s (paused: a machine under
    load, a stalled disk). One failed 1 s status call made the leader step down: a
    whole failover for a hiccup (review 23; torture 184:34 began so). Now the leader
    decides on the last status for a moment; the held writes complete after it."""
    stack = healthy
    t0 = monotonic()

    def hiccup() -> None:
        stack.lab.faults.pause("node1", "volume-db")
        try:
            time.sleep(1.8)
        finally:
            stack.lab.faults.resume("node1", "volume-db")

    out, t_fault = run_writer_through(stack, hiccup)
    time.sleep(3.0)  # several agent cycles after the daemon answers again
    assert stack.wait_service(30) == "node1"
    acks, _ = finish_writer(stack, out)
    assert_no_loss_no_overlap(stack, acks)
    released = [e for e in stack.lab.events.read("leader_released") if e["t"] > t0]
    demoted = [e for e in stack.lab.events.read("demoted") if e["t"] > t0]
    assert not released and not demoted, (released, demoted)
    assert write_gap(acks, t_fault) is not None, "no write acknowledged after the pause"


def test_an_operator_command_goes_to_another_member_when_the_local_one_hangs(healthy):
    """`tandem standby` asks the local etcd member first; a failure there (paused here;
    in a CI run, a TLS handshake cut short under load) failed the command although the
    other two members answered. A request that sets one key is tried on the next."""
    stack = healthy
    stack.lab.faults.pause("node2", stack.etcd.proc)
    try:
        stack.tandem("node2", "standby", "node2", timeout=60)
    finally:
        stack.lab.faults.resume("node2", stack.etcd.proc)
    assert next(n for n in stack.status()["nodes"] if n["node"] == "node2")["standby"]
    stack.tandem("witness", "unstandby", "node2")
