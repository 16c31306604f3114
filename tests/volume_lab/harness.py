"""A two-node tandem volume in a lab, driven through the real CLI and daemons."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tandem.lab.clusterconf import host_env, tandem_argv, write_cluster_config
from tandem.lab.lab import Lab
from tandem.lab.shell import ns_prefix

NODES = ("node1", "node2")


class VolumePair:
    def __init__(self, lab: Lab, size: str = "64MiB", fence_peer_command: str | None = None,
                 ping_timeout: float = 0.5, extra: str = "", after_split_brain: str = "disconnect"):
        self.lab = lab
        self.config = write_cluster_config(lab, volume_size=size, ping_timeout=ping_timeout,
                                           fence_peer_command=fence_peer_command, extra=extra,
                                           after_split_brain=after_split_brain)
        #: a host's own config file instead of the shared one (a deliberate mismatch)
        self.host_configs: dict[str, Path] = {}

    def env(self, host: str) -> dict[str, str]:
        return host_env(self.lab, host, self.host_configs.get(host, self.config))

    def tandem(self, host: str, *args: str, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*ns_prefix(self.lab.spec.netns(host)), *tandem_argv(*args)],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env(host)})
        if check and proc.returncode != 0:
            raise AssertionError(f"{host}: tandem {' '.join(args)}: {proc.stderr}{proc.stdout}")
        return proc

    def status(self, host: str) -> dict:
        return json.loads(self.tandem(host, "volume", "status", "db", "--json").stdout)

    def data_dir(self, host: str) -> Path:
        return self.lab.host_dir(host) / "data"

    def device(self, host: str) -> Path:
        return self.lab.host_dir(host) / "run" / "volume-db" / "disk"

    def backing(self, host: str) -> Path:
        return self.data_dir(host) / "db.img"

    def log(self, host: str) -> str:
        path = self.lab.host_dir(host) / "log" / "volume-db.log"
        return path.read_text() if path.exists() else ""

    def create(self, host: str) -> None:
        for name in ("db.img", "db.meta"):
            (self.data_dir(host) / name).unlink(missing_ok=True)
        self.tandem(host, "volume", "create", "db")

    def start(self, host: str) -> None:
        self.lab.spawn(host, "volume-db", tandem_argv("volume", "up", "db"), env=self.env(host))
        self.wait(lambda: self.tandem(host, "volume", "status", "db", check=False).returncode == 0,
                  what=f"{host} volume daemon up")

    def stop(self, host: str) -> None:
        self.lab.stop(host, "volume-db", timeout=15)

    def wait(self, pred, timeout: float = 30, what: str = "condition", interval: float = 0.1):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = pred()
                if last:
                    return last
            except (AssertionError, json.JSONDecodeError) as e:
                last = e
            time.sleep(interval)
        logs = "\n".join(f"{h} log:\n{self.log(h)[-2500:]}" for h in NODES)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs}")

    def wait_connected_uptodate(self, timeout: float = 60) -> None:
        def ok():
            a, b = self.status("node1"), self.status("node2")
            return all(s["peer"]["connection"] == "Connected" and s["disk"] == "UpToDate"
                       and s["peer"]["disk"] == "UpToDate" for s in (a, b))
        self.wait(ok, timeout, "both nodes Connected and UpToDate")

    def fresh(self, primary: str = "node1") -> None:
        """Both daemons stopped, volumes recreated, started, `primary` forced, synced."""
        for h in NODES:
            if self.lab.supervisor(h).get("volume-db"):
                self.stop(h)
        for h in NODES:
            self.create(h)
            self.start(h)
        self.tandem(primary, "volume", "primary", "db", "--force")
        self.wait_connected_uptodate()

    def teardown(self) -> None:
        for h in NODES:
            rec = self.lab.supervisor(h).get("volume-db")
            if rec:
                self.lab.stop(h, "volume-db", timeout=15)


def pwrite_sync(path: Path, offset: int, data: bytes, direct: bool = True) -> None:
    """Write and fsync through the FUSE file, as the loop driver would."""
    flags = os.O_WRONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags)
    try:
        if direct:
            import mmap
            buf = mmap.mmap(-1, len(data))
            buf.write(data)
            os.pwrite(fd, buf, offset)
            buf.close()
        else:
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)
