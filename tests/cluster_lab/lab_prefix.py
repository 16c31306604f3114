"""Lab names with a chosen prefix for one test module (`tests.conftest.lab` names labs
"t…"; on a machine shared by several workers each keeps to its own prefix)."""

from __future__ import annotations

import secrets

import pytest

import tests.conftest


def lab_prefix(prefix: str):
    """A module-scoped autouse fixture: labs of the module are named `prefix` + hex."""
    @pytest.fixture(scope="module", autouse=True)
    def _lab_prefix():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tests.conftest, "fresh_lab_name",
                       lambda _prefix="t": (prefix + secrets.token_hex(4))[:8])
            yield
    return _lab_prefix
