"""scripts/setup must never stop a process it did not start: the Debian init
scripts' `stop` matched by program (etcd's ends with `start-stop-daemon --stop
--exec /usr/bin/etcd`), so every setup run (each `scripts/test`, `scripts/demo`)
SIGTERMed every etcd of the machine: another lab's cluster lost its DCS at once
(torture seeds 10 and 14 saw all three etcds die together)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_setup_leaves_an_etcd_it_did_not_start_alone(tmp_path):
    etcd = subprocess.Popen(
        ["/usr/bin/etcd", "--name", "bystander", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", "http://127.0.0.1:23791", "--advertise-client-urls", "http://127.0.0.1:23791",
         "--listen-peer-urls", "http://127.0.0.1:23801", "--initial-advertise-peer-urls",
         "http://127.0.0.1:23801", "--initial-cluster", "bystander=http://127.0.0.1:23801"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(1.0)
        assert etcd.poll() is None, "the bystander etcd did not start"
        setup = subprocess.run(["bash", str(ROOT / "scripts" / "setup")], capture_output=True, text=True,
                               timeout=600)
        assert setup.returncode == 0, setup.stderr[-2000:]
        time.sleep(0.5)
        assert etcd.poll() is None, f"scripts/setup stopped an etcd it did not start (exit {etcd.returncode})"
    finally:
        etcd.kill()
        etcd.wait()
