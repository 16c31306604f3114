"""Fixtures for the resource tests: one lab for the whole package, and a way to
run a resource operation *inside* a lab host.

Resources act on the network namespace they run in (the agent runs inside its
node), so each operation runs as ``python -m tandem.cluster.resources.run KIND
ACTION --config JSON`` through ``Lab.run`` (nsenter into the host's network
namespace; mounts stay shared). Each call is a fresh process, so the tests also
prove that a resource finds what an earlier process started (loop device,
pids) through its state file, as a restarted agent must. Whatever a test
starts is registered with `resources` and stopped in reverse order at the end,
also when the test fails; the lab's teardown is the last safety net (it kills
what runs in the hosts and releases mounts and loop devices under its dir).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tandem.errors import LabError

PY = sys.executable
TIMINGS = Path(os.environ.get("TANDEM_RES_TIMINGS", "/dev/null"))


@pytest.fixture(scope="package")
def lab(lab_root):
    """One lab for all resource tests (overrides the per-module lab)."""
    from tandem.lab.lab import Lab
    from tests.conftest import _needs_root, fresh_lab_name
    _needs_root()
    name = fresh_lab_name("r")
    the_lab = Lab.up(name, root=lab_root)
    try:
        yield the_lab
    finally:
        Lab.down_by_name(name, lab_root)


def op(lab, host: str, kind: str, action: str, config: dict, timeout: float = 180) -> dict:
    """Run one operation in `host`; return the runner's JSON line plus `rc`."""
    proc = lab.run(host, [PY, "-m", "tandem.cluster.resources.run", kind, action,
                          "--config", json.dumps(config, default=str)], check=False, timeout=timeout)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"runner gave no JSON (rc {proc.returncode}): {proc.stderr.strip()}") from None
    out["rc"] = proc.returncode
    with open(TIMINGS, "a") as f:
        f.write(f"{kind} {action} on {host}: {out.get('seconds')} s ok={out.get('ok')}\n")
    return out


def must(lab, host: str, kind: str, action: str, config: dict) -> dict:
    out = op(lab, host, kind, action, config)
    assert out["ok"], f"{kind} {action} on {host}: {out['message']}"
    return out


class Started:
    """Resources a test started, stopped again in reverse at teardown."""

    def __init__(self, lab):
        self.lab = lab
        self.items: list[tuple[str, str, dict]] = []

    def start(self, host: str, kind: str, config: dict) -> dict:
        self.items.append((host, kind, config))
        return must(self.lab, host, kind, "start", config)

    def stop_all(self) -> None:
        errors = []
        for host, kind, config in reversed(self.items):
            try:
                out = op(self.lab, host, kind, "stop", config)
                if not out["ok"]:
                    errors.append(out["message"])
            except (AssertionError, LabError) as e:
                errors.append(str(e))
        self.items.clear()
        assert not errors, f"cleanup: {errors}"


@pytest.fixture
def resources(lab):
    started = Started(lab)
    try:
        yield started
    finally:
        started.stop_all()


def sparse_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path
