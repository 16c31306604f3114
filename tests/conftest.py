"""Shared fixtures: a real lab of network-namespace hosts, removed afterwards
whatever happens to the test."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def tandem_cmd() -> list[str]:
    exe = VENV_BIN / "tandem"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tandem.cli.main"]


def run_tandem(*args: str, check: bool = False, timeout: float = 120,
               env: dict | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*tandem_cmd(), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"tandem {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
    return proc


def _needs_root() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.fail("lab tests need root, iproute2 and nftables: run scripts/setup as root")


def _loop_devices() -> dict[str, str]:
    out = subprocess.run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], capture_output=True,
                         text=True).stdout
    return {p[0]: (p[1] if len(p) > 1 else "") for p in (line.split(None, 1) for line in out.splitlines())}


def _loops_of_other_labs(lab_root: Path) -> set[str]:
    """Loop devices that labs of other runs recorded attaching (a fault campaign beside
    the tests): a loop whose FUSE file was torn away shows a bare "/disk" as its
    backing file, whoever's it is."""
    from tandem.lab.lab import _state_files
    from tandem.lab.topology import DEFAULT_ROOT
    tops = [p / "hosts" for p in DEFAULT_ROOT.glob("*")]
    tops += [p / "hosts" for run in lab_root.parent.glob("run*") if run != lab_root for p in run.glob("*")]
    found = set()
    for top in tops:
        for state in _state_files(top):
            try:
                dev = json.loads(state.read_text()).get("loop")
            except (OSError, ValueError, AttributeError):
                continue
            if dev:
                found.add(dev)
    return found


def fresh_lab_name(prefix: str = "t") -> str:
    """A random lab name; TANDEM_LAB_PREFIX (when several people share the machine) replaces
    the prefix."""
    prefix = os.environ.get("TANDEM_LAB_PREFIX") or prefix
    return (prefix + secrets.token_hex(4))[:8]


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory) -> Path:
    root = Path("/var/tmp/tandem-test") / f"run{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(lab_root):
    from tandem.lab.lab import Lab
    _needs_root()
    name = fresh_lab_name()
    loops_before = _loop_devices()
    the_lab = Lab.up(name, root=lab_root)
    try:
        yield the_lab
    finally:
        keep = os.environ.get("TANDEM_KEEP_LOGS")
        if keep:
            import signal
            import time
            for h in the_lab.spec.host_names:
                rec = the_lab.supervisor(h).get("volume-db")
                if rec:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rec.pid, signal.SIGUSR1)
            time.sleep(0.5)
            dest = Path(keep) / name
            dest.mkdir(parents=True, exist_ok=True)
            for log in the_lab.spec.dir.glob("hosts/*/log/*.log"):
                shutil.copy(log, dest / f"{log.parent.parent.name}-{log.name}")
            if the_lab.spec.event_file.exists():
                shutil.copy(the_lab.spec.event_file, dest / "events.jsonl")
        Lab.down_by_name(name, lab_root)
        others = _loops_of_other_labs(lab_root)
        leaked = {d: f for d, f in _loop_devices().items()
                  if d not in loops_before and (f.startswith(str(lab_root))
                                                or (f == "/disk" and d not in others))}
        assert not leaked, f"lab {name} left loop devices behind: {leaked}"


@pytest.fixture
def healed(lab):
    """Each test starts and ends with no faults in force."""
    yield lab
    lab.faults.heal()
    for h in lab.spec.host_names:
        lab.faults.unslow(h)
        if h in lab.read_state()["down"]:
            lab.faults.restart(h)
