"""Each fault primitive really acts on traffic and processes, and heals."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tandem.errors import LabError
from tests.lab.netprobe import ping, ping_within, udp_reaches

HTTP_GET = (
    "import sys, urllib.request\n"
    "try:\n"
    "    urllib.request.urlopen(f'http://{sys.argv[1]}:8000/', timeout=float(sys.argv[2])).read()\n"
    "    print('OK')\n"
    "except Exception as e:\n"
    "    print('FAIL', type(e).__name__)\n"
)


def http_ok(lab, src, dst, timeout=1.0) -> bool:
    out = lab.run(src, [sys.executable, "-c", HTTP_GET, lab.address(dst), str(timeout)],
                  timeout=timeout + 10).stdout
    return out.strip() == "OK"


def test_hosts_reach_each_other_on_their_networks(healed):
    lab = healed
    assert ping(lab, "node1", "node2", "public")
    assert ping(lab, "node1", "node2", "replication")
    assert ping(lab, "client", "witness", "public")
    # The client has no cable on the replication network.
    with pytest.raises(LabError):
        lab.address("client", "replication")
    assert ping(lab, "client", "node1", "public") is not False  # sanity: probe returns bool


def test_partition_blocks_exactly_the_chosen_pairs(healed):
    lab = healed
    lab.faults.partition(["node1"], ["node2"], net="public")
    assert not ping(lab, "node1", "node2", "public")
    assert not ping(lab, "node2", "node1", "public")
    # Other network and other pairs are untouched.
    assert ping(lab, "node1", "node2", "replication")
    assert ping(lab, "node1", "witness", "public")
    assert ping(lab, "client", "node2", "public")
    lab.faults.heal()
    assert ping(lab, "node1", "node2", "public")


def test_one_way_partition_blocks_one_direction(healed):
    lab = healed
    lab.faults.partition(["node1"], ["node2"], net="replication", one_way=True)
    assert not udp_reaches(lab, "node1", "node2", "replication")
    assert udp_reaches(lab, "node2", "node1", "replication")
    lab.faults.heal()
    assert udp_reaches(lab, "node1", "node2", "replication")


def test_isolate_cuts_a_host_from_everyone(healed):
    lab = healed
    lab.faults.isolate("witness")
    for other in ("node1", "node2", "client"):
        assert not ping(lab, other, "witness", "public")
    assert ping(lab, "node1", "node2", "public")
    events = [e for e in lab.events.read("fault") if e["fault"] == "partition"]
    assert events and events[-1]["a"] == ["witness"]


def test_crash_kills_every_process_of_the_host_and_restart_brings_links_back(healed):
    lab = healed
    a = lab.spawn("node2", "sleeper-a", ["sleep", "300"])
    b = lab.spawn("node2", "sleeper-b", ["sh", "-c", "sleep 300 & sleep 300; wait"])
    other = lab.spawn("node1", "sleeper", ["sleep", "300"])
    vip = str(lab.spec.vip(7))
    lab.run("node2", ["ip", "addr", "add", f"{vip}/24", "dev", "pub0"])
    from tandem.lab.supervisor import pid_alive, pids_in_netns
    time.sleep(0.2)
    assert len(pids_in_netns(lab.spec.netns("node2"))) >= 3
    t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
    killed = lab.faults.crash("node2")
    assert a.pid in killed and b.pid in killed
    assert pids_in_netns(lab.spec.netns("node2")) == []
    assert not pid_alive(a.pid) and not pid_alive(b.pid)
    assert pid_alive(other.pid), "a crash of node2 must not touch node1"
    assert not ping(lab, "node1", "node2", "public")
    crash_events = [e for e in lab.events.read("fault") if e["fault"] == "crash"]
    assert crash_events[-1]["host"] == "node2" and crash_events[-1]["t"] >= t0
    # the checker ends the host's VIPs and writable interval when it is really down
    [down] = [e for e in lab.events.read("host_down") if e["t"] >= t0]
    assert down["host"] == "node2" and down["t"] > crash_events[-1]["t"]
    # ... and its volume's writable interval once every process is dead (review 29)
    [dead] = [e for e in lab.events.read("host_killed") if e["t"] >= t0]
    assert dead["host"] == "node2" and dead["t"] > down["t"] and dead["pids"] >= 2
    lab.faults.restart("node2")
    assert vip not in lab.run("node2", ["ip", "-4", "addr", "show", "dev", "pub0"]).stdout, \
        "a crashed host must come back without the virtual addresses its software added"
    assert lab.address("node2") in lab.run("node2", ["ip", "-4", "addr", "show", "dev", "pub0"]).stdout
    assert ping_within(lab, "node1", "node2", "public")
    assert ping_within(lab, "node1", "node2", "replication")
    lab.stop("node1", "sleeper")
    assert not pid_alive(other.pid)


def test_a_stale_record_never_signals_the_process_that_got_its_pid(healed):
    """A recorded process died by itself and its pid went to a process outside the
    lab (pid_max is 32768 here: this happens within a campaign). Pausing, stopping
    and crashing the host must leave that process alone."""
    import json
    import signal
    import subprocess
    lab = healed
    sup = lab.supervisor("node2")
    rec = lab.spawn("node2", "short-lived", ["sleep", "300"])
    outsider = subprocess.Popen(["sleep", "300"], start_new_session=True)  # root netns, own group
    try:
        time.sleep(0.05)  # start times have a 10 ms resolution: the recorded one must differ
        lab.stop("node2", "short-lived")
        lab.spawn("node2", "short-lived", ["sleep", "300"])
        # running at once, although nsenter may not have entered node2's namespace yet
        # (a campaign's census took such a just-started agent for dead)
        assert sup.running("short-lived")
        os.kill(sup.get("short-lived").pid, signal.SIGKILL)  # dies by itself: the record stays
        path = sup.proc_dir / "short-lived.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "pid": outsider.pid}))
        assert rec.pid != outsider.pid and not sup.running("short-lived")
        with pytest.raises(LabError, match="not running"):
            lab.faults.pause("node2", "short-lived")
        assert _state(outsider.pid) != "T", "SIGSTOP reached a process outside the lab"
        lab.stop("node2", "short-lived")
        path.write_text(json.dumps({**json.loads(path.read_text() if path.exists() else "{}"),
                                    "host": "node2", "name": "short-lived", "pid": outsider.pid,
                                    "cmd": ["sleep"], "log": "", "started": 0.0}))
        lab.faults.crash("node2")
        lab.faults.restart("node2")
        assert outsider.poll() is None, "a stale record killed a process outside the lab"
        assert _state(outsider.pid) in ("S", "R")
    finally:
        outsider.kill()
        outsider.wait()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_pause_stops_a_process_from_answering(healed):
    lab = healed
    lab.spawn("node2", "web", [sys.executable, "-m", "http.server", "--bind",
                               lab.address("node2"), "8000"])
    try:
        deadline = time.monotonic() + 10
        while not http_ok(lab, "client", "node2") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http_ok(lab, "client", "node2")
        lab.faults.pause("node2", "web")
        assert not http_ok(lab, "client", "node2", timeout=1.0)
        lab.faults.resume("node2", "web")
        assert http_ok(lab, "client", "node2", timeout=5.0)
    finally:
        lab.stop("node2", "web")


def test_slow_link_limits_throughput(healed):
    lab = healed
    sink = ("import socket,sys\ns=socket.socket();s.bind((sys.argv[1],9100));s.listen()\n"
            "c,_=s.accept()\nwhile c.recv(65536): pass\n")
    source = ("import socket,sys,time\nt=time.monotonic();s=socket.create_connection((sys.argv[1],9100))\n"
              "s.sendall(b'x'*int(sys.argv[2]));s.shutdown(1);s.recv(1);print(time.monotonic()-t)\n")

    def transfer_seconds(nbytes: int) -> float:
        lab.spawn("node2", "sink", [sys.executable, "-c", sink, lab.address("node2")])
        try:
            time.sleep(0.3)
            out = lab.run("node1", [sys.executable, "-c", source, lab.address("node2"),
                                    str(nbytes)], timeout=30).stdout
            return float(out.strip())
        finally:
            lab.stop("node2", "sink")

    fast = transfer_seconds(1_000_000)
    lab.faults.slow("node1", "8mbit", net="public")
    slow = transfer_seconds(1_000_000)
    lab.faults.unslow("node1")
    # 1 MB at 8 Mbit/s needs about a second; unshaped it takes milliseconds.
    assert slow > 5 * fast, (fast, slow)
    assert slow > 0.5


def test_unknown_hosts_and_networks_are_clear_errors(healed):
    lab = healed
    with pytest.raises(LabError, match="no host 'node9'"):
        lab.faults.partition(["node1"], ["node9"])
    with pytest.raises(LabError, match="network 'pubic'"):
        lab.faults.partition(["node1"], ["node2"], net="pubic")
    with pytest.raises(LabError, match="on both sides"):
        lab.faults.partition(["node1"], ["node1"])
    with pytest.raises(LabError, match="no process named"):
        lab.faults.pause("node1", "nothing")


def test_the_vip_watch_shares_our_mount_namespace(healed):
    """Its `ip monitor` processes live as long as a campaign: in a mount namespace of
    their own (what `ip -n` makes) they held a copy of every mount of the moment, so
    each ext4 unmounted later stayed alive with its loop device attached (12 such
    loops after 40 torture schedules)."""
    from tandem.lab.supervisor import pids_in_netns
    from tandem.lab.vipwatch import VipWatch
    lab = healed
    watch = VipWatch(lab, [str(lab.spec.vip(9))], hosts=["node1", "node2"])
    watch.start()
    try:
        ours = os.readlink("/proc/self/ns/mnt")
        for host, proc in watch.procs.items():
            assert proc.poll() is None, host
            assert os.readlink(f"/proc/{proc.pid}/ns/mnt") == ours, f"{host}'s monitor has its own mounts"
            assert proc.pid in pids_in_netns(lab.spec.netns(host)), "the monitor must die with its host"
    finally:
        watch.stop()


def test_the_campaign_resumes_a_process_it_paused_just_after_its_start(healed, monkeypatch):
    """Torture 66:3: the agent was paused the moment node1 came back; the process was
    still nsenter in the root namespace, so at the heal it did not look like one of
    node1's ("a recycled pid?") and was never resumed: node1 stayed Offline for good.
    A process that has not entered its host's namespace yet looks like this one."""
    import signal
    import subprocess
    from types import SimpleNamespace

    from tandem.lab.torture_nemesis import Nemesis

    proc = subprocess.Popen(["sleep", "60"])
    try:
        nemesis = Nemesis(SimpleNamespace(lab=healed, leader=lambda: "node1"))
        monkeypatch.setattr(nemesis, "_target", lambda p: ("node1", proc.pid))
        assert not healed.supervisor("node1").owns(proc.pid)  # not (yet) in node1's namespace
        nemesis._apply_pause({"host": "node1", "name": "agent"})
        assert _state(proc.pid) == "T"
        nemesis._heal_pause({"host": "node1", "name": "agent"})
        assert _state(proc.pid) != "T", "the paused process was not resumed"
        # a pid the kernel handed to another process meanwhile is left alone
        nemesis._apply_pause({"host": "node1", "name": "agent"})
        nemesis.paused[("node1", "agent")] = (proc.pid, -1)  # another start time
        nemesis._heal_pause({"host": "node1", "name": "agent"})
        assert _state(proc.pid) == "T"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _state(pid: int) -> str:
    for _ in range(100):  # the state changes asynchronously, shortly after the signal
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state not in ("R",):
            return state
        time.sleep(0.01)
    return state


def test_the_vip_watch_corrects_a_change_its_monitor_missed(healed, monkeypatch):
    """A monitor respawned after its host crashed may subscribe after the address
    went: the watcher then believes the host still holds it, and its next real
    "held" looked like no change (the holding vanished from the history). The
    periodic look records what the kernel has."""
    from tandem.lab import vipwatch
    monkeypatch.setattr(vipwatch, "RECONCILE_EVERY", 0.5)
    lab = healed
    addr = str(lab.spec.vip(9))
    watch = vipwatch.VipWatch(lab, [addr], hosts=["node1"])
    watch.start()
    try:
        t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
        with watch.lock:
            watch.held[("node1", addr)] = True  # a deletion the monitor never saw
        deadline = time.monotonic() + 10
        seen = []
        while time.monotonic() < deadline and not seen:
            seen = [e for e in lab.events.read("vip") if e["t"] >= t0 and e["address"] == addr]
            time.sleep(0.1)
        assert [(e["host"], e["held"], e["source"]) for e in seen] == [("node1", False, "reconcile")]
    finally:
        watch.stop()


def test_a_crash_whose_cables_would_not_come_out_still_kills_the_host(healed, monkeypatch):
    """Cables come out first now; if `ip` fails there, the host must still end up
    dead, down and restartable, with its `host_down` after the kill (the checker
    would otherwise end its intervals at the crash while it ran on)."""
    from tandem.errors import LabError
    from tandem.lab.supervisor import pid_alive
    lab = healed
    a = lab.spawn("node2", "sleeper-a", ["sleep", "300"])
    real = lab.faults._links

    def stuck(host: str, updown: str) -> None:
        if updown == "down":
            raise LabError("ip link set: RTNETLINK answers: Device or resource busy")
        real(host, updown)

    monkeypatch.setattr(lab.faults, "_links", stuck)
    t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
    with pytest.raises(LabError):
        lab.faults.crash("node2")
    assert not pid_alive(a.pid)
    assert "node2" in lab.read_state()["down"]
    [down] = [e for e in lab.events.read("host_down") if e["t"] >= t0]
    assert down["host"] == "node2"
    monkeypatch.setattr(lab.faults, "_links", real)
    lab.faults.restart("node2")
    assert "node2" not in lab.read_state()["down"]
