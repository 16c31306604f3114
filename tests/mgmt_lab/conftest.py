from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tandem.lab.mgmtstack import MgmtStack
from tests.cluster_lab.lab_prefix import lab_prefix

_prefix = lab_prefix("hm")  # labs of this package are named hm… on the shared machine


@pytest.fixture(scope="module")
def mstack(lab):
    """The whole stack with the management tier, in one lab for the module."""
    st = MgmtStack(lab, volume_size="256MiB", op_seconds=1.5, dead_after=2.0)
    try:
        st.start()
        yield st
    finally:
        keep = os.environ.get("TANDEM_KEEP_LOGS")
        if keep:  # the clones' own logs live in the run dirs, not the host logs
            dest = Path(keep) / lab.spec.name
            dest.mkdir(parents=True, exist_ok=True)
            for h in ("node1", "node2"):
                for log in (lab.host_dir(h) / "run" / "clones").glob("*/*.log"):
                    shutil.copy(log, dest / f"{h}-clone-{log.parent.name}-{log.name}")
        st.stop()
