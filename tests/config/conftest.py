from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tandem.dcs import pki

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.toml"


@pytest.fixture
def cfgdir(tmp_path: Path) -> Path:
    """The example config and a good secret file in a fresh directory."""
    shutil.copy(EXAMPLE, tmp_path / "cluster.toml")
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(secret, 0o600)
    pki.init(tmp_path / "pki", "cloud", {"node1": ["10.100.1.11"]})  # etcd.tls_dir = "pki"
    return tmp_path
