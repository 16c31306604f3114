"""`lab up`/`lab down` leave the machine as they found it, and labs coexist."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tandem.errors import LabError
from tandem.lab.lab import Lab, loops_backed_under, mounts_under
from tests.conftest import fresh_lab_name, run_tandem
from tests.lab.netprobe import ping


def machine_snapshot(*labs: str) -> list[str]:
    """What the machine holds of these labs: namespaces, loop devices, mounts and nft
    tables that name them. Only theirs: other runs (a campaign) may be changing the
    rest of the machine meanwhile."""
    def out(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True).stdout
    lines = (out("ip", "netns", "list") + out("losetup", "-a") + Path("/proc/mounts").read_text()
             + out("nft", "list", "tables")).splitlines()
    return sorted(line for line in lines if any(lab in line for lab in labs))


def test_two_labs_coexist_and_down_leaves_nothing(lab_root):
    a, b = fresh_lab_name("a"), fresh_lab_name("b")
    assert machine_snapshot(a, b) == []
    lab_a = Lab.up(a, root=lab_root)
    try:
        lab_b = Lab.up(b, root=lab_root)
        try:
            assert lab_a.spec.octet != lab_b.spec.octet
            assert ping(lab_a, "node1", "node2")
            assert ping(lab_b, "node1", "node2")
            # A storage leftover as a crashed test would leave it: a loop device
            # and a mount inside the lab's directory.
            img = lab_b.host_dir("node1") / "data" / "img"
            subprocess.run(["truncate", "-s", "8M", str(img)], check=True)
            subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
            dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True,
                                 capture_output=True, text=True).stdout.strip()
            mnt = lab_b.host_dir("node1") / "data" / "mnt"
            mnt.mkdir()
            subprocess.run(["mount", dev, str(mnt)], check=True)
            assert mounts_under(lab_b.spec.dir) and loops_backed_under(lab_b.spec.dir)
            lab_b.spawn("node1", "sleeper", ["sleep", "300"])
        finally:
            lab_b.down()
        # Lab A is untouched by B's removal.
        assert ping(lab_a, "node1", "node2")
    finally:
        lab_a.down()
    assert machine_snapshot(a, b) == []


def test_up_twice_is_refused_and_down_is_idempotent(lab_root):
    name = fresh_lab_name()
    lab = Lab.up(name, root=lab_root)
    try:
        with pytest.raises(LabError, match="already up"):
            Lab.up(name, root=lab_root)
    finally:
        lab.down()
    Lab.down_by_name(name, lab_root)  # nothing left: no error
    with pytest.raises(LabError, match="not up"):
        Lab.load(name, root=lab_root)


def test_cli_lab_round_trip(lab_root):
    name = fresh_lab_name("c")
    env = {"TANDEM_LAB_ROOT": str(lab_root)}
    try:
        up = run_tandem("lab", "up", "--lab", name, env=env)
        assert up.returncode == 0, up.stderr
        assert "node1" in up.stdout and "witness" in up.stdout
        st = run_tandem("lab", "status", "--lab", name, "--json", env=env)
        assert '"node2"' in st.stdout
        ex = run_tandem("lab", "exec", "--lab", name, "node1", "--", "ip", "-o", "addr", env=env)
        assert "pub0" in ex.stdout and "rep0" in ex.stdout
        bad = run_tandem("lab", "partition", "--lab", name, "node1", "nodeX", env=env)
        assert bad.returncode != 0
        assert bad.stderr.strip().splitlines() == [
            f"tandem: no host 'nodeX' in lab {name} (hosts: node1, node2, witness, client)"]
        badname = run_tandem("lab", "up", "--lab", "Bad_Name", env=env)
        assert badname.returncode != 0 and "lab name 'Bad_Name'" in badname.stderr
    finally:
        down = run_tandem("lab", "down", "--lab", name, env=env)
    assert down.returncode == 0
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True).stdout


def test_down_copes_with_a_dead_fuse_mount(lab_root):
    """A killed FUSE daemon leaves a mount that answers ENOTCONN; `down` must still
    remove everything, including a loop device on the dead file."""
    import os
    import signal
    import sys
    import time

    name = fresh_lab_name("f")
    lab = Lab.up(name, root=lab_root)
    try:
        data = lab.host_dir("node1") / "data" / "backing.img"
        subprocess.run(["truncate", "-s", "16M", str(data)], check=True)
        mnt = lab.host_dir("node1") / "run" / "volume-x"
        mnt.mkdir(parents=True)
        rec = lab.spawn("node1", "fuse",
                        [sys.executable, "-m", "tandem.volume.fuse_raw", str(data), str(mnt)])
        deadline = time.monotonic() + 20
        while not (mnt / "disk").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        dev = subprocess.run(["losetup", "--find", "--show", str(mnt / "disk")], check=True,
                             capture_output=True, text=True).stdout.strip()
        os.kill(rec.pid, signal.SIGKILL)
        time.sleep(0.3)
        assert mounts_under(lab.spec.dir)
        assert dev in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    finally:
        Lab.down_by_name(name, lab_root)
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not mounts_under(lab_root / name)
    assert dev not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
