from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tandem.lab.stack import LabStack


@pytest.fixture(scope="module")
def stack(lab):
    st = LabStack(lab, volume_size="256MiB")
    try:
        st.start()
        yield st
    finally:
        if os.environ.get("TANDEM_KEEP_LOGS"):
            import shutil
            import subprocess
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            for h in ("node1", "node2"):
                rec = lab.supervisor(h).get("agent")
                if rec:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rec.pid, signal.SIGUSR1)
                if rec and Path(spy).exists():
                    dump = subprocess.run([spy, "dump", "--pid", str(rec.pid)], capture_output=True,
                                          text=True, timeout=30).stdout
                    (lab.host_dir(h) / "log" / "agent-stacks.log").write_text(dump)
            for h in ("node1", "node2"):  # thread dumps of the volume daemons into their logs
                rec = lab.supervisor(h).get("volume-db")
                if rec:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rec.pid, signal.SIGUSR1)
            time.sleep(0.5)
        st.stop()


@pytest.fixture
def healthy(stack, healed):
    """Every test starts with node1 and node2 up, in sync, and the service on node1."""
    lab = stack.lab
    for h in ("node1", "node2"):
        # A test that failed before restarting the host it crashed left it powered on
        # by `healed` (cables in) but with nothing running: every later test then
        # waited in vain for it.
        if h in lab.read_state()["down"] or not lab.supervisor(h).running("agent"):
            stack.restart_host(h)
    for flag in ("maintenance",):
        stack.tandem("witness", flag, "off")
    for h in ("node1", "node2"):
        stack.tandem("witness", "unstandby", h)
    stack.wait(lambda: all(n["online"] and n["healthy"] and n["disk"] == "UpToDate"
                           and n["eligible"] or n["role"] == "Leader"
                           for n in stack.status()["nodes"]), 120, "both nodes healthy and in sync")
    if stack.wait_service(60) != "node1":
        stack.tandem("witness", "switchover", "--to", "node1", "--force", timeout=60)
    stack.wait_service(60)
    return stack
