"""Fencing agents: exit codes, timeouts and command lines, with real subprocesses.

There is no BMC on this machine, so the ipmitool agent runs against a fake
`ipmitool` executable (a shell script on PATH) that records its arguments and
plays a BMC's answers. What this proves: the command lines, the polling for
"off", and the error handling; not that a real BMC powers a real server off.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from tandem.cluster.fencing import fence_agent
from tandem.config import Fencing

PASSWORD = "s3cret-bmc-password-0123"


def fence(cfg: Fencing, node: str = "node1", address: str = "10.0.0.11"):
    return asyncio.run(fence_agent(cfg).fence(node, address))


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# --- exec ----------------------------------------------------------------------------
def test_exec_exit_zero_confirms_and_gets_node_and_address(tmp_path):
    out = tmp_path / "seen"
    cmd = script(tmp_path / "fence.sh", f'echo "$1 $2 $TANDEM_FENCE_NODE $TANDEM_FENCE_ADDRESS" > {out}\n')
    r = fence(Fencing(agent="exec", command=[str(cmd), "{node}", "{address}"]))
    assert r.confirmed, r.reason
    assert out.read_text().split() == ["node1", "10.0.0.11", "node1", "10.0.0.11"]


def test_exec_failure_is_not_confirmed_and_says_why(tmp_path):
    cmd = script(tmp_path / "fence.sh", "echo 'PDU refused the outlet' >&2; exit 3\n")
    r = fence(Fencing(agent="exec", command=[str(cmd)]))
    assert not r.confirmed
    assert "exited with 3" in r.reason and "PDU refused the outlet" in r.reason


def test_exec_hang_is_killed_at_the_timeout(tmp_path):
    pidfile = tmp_path / "pid"
    cmd = script(tmp_path / "fence.sh", f"echo $$ > {pidfile}; sleep 30\n")
    r = fence(Fencing(agent="exec", command=[str(cmd)], timeout=0.5))
    assert not r.confirmed and "no confirmation within 0.5 s" in r.reason
    assert r.seconds < 30
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_exec_that_leaves_a_child_behind_is_judged_by_its_exit(tmp_path):
    """A fence script that starts a background job (`logger ... &`, a notifier) and
    exits 0 kept its output pipe open through the child: the call waited for the pipe
    until the timeout and reported no confirmation, and the child lived on (review 35).
    Its exit is the answer; the child dies with the call."""
    pidfile = tmp_path / "child"
    cmd = script(tmp_path / "fence.sh", f"echo 'outlet off'; sleep 30 & echo $! > {pidfile}; exit 0\n")
    r = fence(Fencing(agent="exec", command=[str(cmd)], timeout=5))
    assert r.confirmed, r.reason
    assert r.seconds < 2, r.seconds
    pid = int(pidfile.read_text())
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        state = "gone"
    assert state in ("Z", "gone"), f"the fence script's child {pid} outlived the call ({state})"


def test_exec_missing_command_is_a_failure_not_a_crash(tmp_path):
    r = fence(Fencing(agent="exec", command=[str(tmp_path / "nope")]))
    assert not r.confirmed and "cannot run" in r.reason


# --- ipmitool (fake executable on PATH) ------------------------------------------------
@pytest.fixture
def fake_ipmitool(tmp_path, monkeypatch):
    """A fake ipmitool: logs its argv; `power off` flips a state file that
    `power status` reports after STATUS_LAG calls; FAIL_OFF makes `off` fail."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    state = tmp_path / "bmc"
    script(bindir / "ipmitool", f"""
echo "$@" >> {state}.argv
case "$*" in
  *"power off") [ -n "$FAIL_OFF" ] && {{ echo "Error: Unable to establish IPMI v2 / RMCP+ session" >&2
                exit 1; }}
                echo 0 > {state}.polls; echo "Chassis Power Control: Down/Off"; exit 0;;
  *"power status") n=$(cat {state}.polls 2>/dev/null || echo 0); echo $((n+1)) > {state}.polls
                   if [ "$n" -ge "${{STATUS_LAG:-0}}" ]; then echo "Chassis Power is off"
                   else echo "Chassis Power is on"; fi; exit 0;;
esac
exit 2
""")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    pw = tmp_path / "bmc-password"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    return state, pw


def ipmi(pw: Path, **kw) -> Fencing:
    return Fencing(agent="ipmitool", address="10.9.9.11", user="admin", password_file=pw, **kw)


def test_ipmitool_powers_off_then_polls_until_off(fake_ipmitool, monkeypatch, caplog):
    state, pw = fake_ipmitool
    monkeypatch.setenv("STATUS_LAG", "2")
    r = fence(ipmi(pw, timeout=10))
    assert r.confirmed, r.reason
    calls = Path(f"{state}.argv").read_text().splitlines()
    base = f"-I lanplus -H 10.9.9.11 -U admin -f {pw}"
    assert calls == [f"{base} chassis power off"] + [f"{base} chassis power status"] * 3
    assert PASSWORD not in " ".join(calls) + r.reason + caplog.text


def test_ipmitool_failed_power_off_is_not_confirmed(fake_ipmitool, monkeypatch):
    _, pw = fake_ipmitool
    monkeypatch.setenv("FAIL_OFF", "1")
    r = fence(ipmi(pw))
    assert not r.confirmed and "Unable to establish IPMI" in r.reason


def test_ipmitool_never_off_times_out(fake_ipmitool, monkeypatch):
    _, pw = fake_ipmitool
    monkeypatch.setenv("STATUS_LAG", "1000")
    r = fence(ipmi(pw, timeout=1.5))
    assert not r.confirmed
    assert "no confirmation within 1.5 s" in r.reason and "Chassis Power is on" in r.reason


def test_ipmitool_unreadable_password_file(fake_ipmitool, tmp_path):
    state, _ = fake_ipmitool
    r = fence(ipmi(tmp_path / "missing"))
    assert not r.confirmed and "not readable" in r.reason
    assert not Path(f"{state}.argv").exists()


def test_ipmitool_not_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    r = fence(ipmi(pw))
    assert not r.confirmed and "cannot run" in r.reason


# --- lab (its error path; the crash itself is in tests/cluster_lab/test_fencing.py) ----------
def test_lab_fence_of_a_lab_that_is_not_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_LAB_ROOT", str(tmp_path))
    r = fence(Fencing(agent="lab", lab="hfnone", root_netns=Path(f"/proc/{os.getpid()}/ns/net")))
    assert not r.confirmed and "not up" in r.reason
