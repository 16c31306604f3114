from __future__ import annotations

import pytest

from tests.volume_lab.harness import VolumePair


@pytest.fixture(scope="module")
def pair(lab):
    vp = VolumePair(lab)
    try:
        yield vp
    finally:
        vp.teardown()


@pytest.fixture
def fresh(pair, healed):
    """A freshly created, fully synced volume with node1 Primary."""
    for h in ("node1", "node2"):
        if h in pair.lab.read_state()["down"]:
            pair.lab.faults.restart(h)
    pair.fresh("node1")
    return pair
