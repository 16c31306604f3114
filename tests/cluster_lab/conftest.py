from __future__ import annotations

import pytest

from tandem.lab.stack import LabStack


@pytest.fixture(scope="module")
def stack(lab):
    st = LabStack(lab, volume_size="256MiB")
    try:
        st.start()
        yield st
    finally:
        st.stop()


@pytest.fixture
def healthy(stack, healed):
    """Every test starts with node1 and node2 up, in sync, and the service on node1."""
    lab = stack.lab
    for h in ("node1", "node2"):
        if h in lab.read_state()["down"]:
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
