"""A tandem cluster config for a lab: the lab's addresses, a fresh secret, and
per-host environments, so every lab test and the demo run the real CLI against
one config file exactly as an operator would."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

from tandem.lab.lab import Lab
from tandem.lab.shell import run
from tandem.secretfile import write_private

PKI_HOSTS = ("node1", "node2", "witness", "client")


def lab_pki(lab: Lab) -> Path:
    """The lab's etcd PKI (a CA, a certificate per host, and one for the lab's own
    tools as "client"), made once per lab: etcd takes no client without one."""
    from tandem.dcs import pki
    tls_dir = lab.spec.dir / "etc" / "pki"
    if (tls_dir / "client.key").exists():
        return tls_dir
    tmp = lab.spec.dir / "etc" / f"pki.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    hosts = {h: ([] if h == "client" else [lab.address(h, "public"), lab.address(h, "replication")])
             for h in PKI_HOSTS}
    pki.init(tmp, lab.spec.name, hosts, db_hosts={h: hosts[h] for h in ("node1", "node2")})
    try:
        tmp.rename(tls_dir)  # all files at once; another process may have been first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return tls_dir


def write_cluster_config(lab: Lab, *, volume_size: str = "256MiB", ping_timeout: float = 0.5,
                         fence_peer_command: str | None = None, fence_peer: str | None = None,
                         extra: str = "", cache: str = "write-through",
                         after_split_brain: str = "disconnect", etcd: str = "") -> Path:
    """`etcd`: more keys of the [etcd] table (its tls_dir is the lab's PKI)."""
    etc = lab.spec.dir / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    secret = etc / "secret"
    if not secret.exists():
        write_private(secret, (secrets.token_hex(32) + "\n").encode())
    fence = f'fence_peer_command = "{fence_peer_command}"\n' if fence_peer_command else ""
    fence += f'fence_peer = "{fence_peer}"\n' if fence_peer else ""
    text = f"""# written by the lab for lab {lab.spec.name}
[cluster]
name = "{lab.spec.name}"
secret = {{ file = "{secret}" }}

[nodes.node1]
public_address = "{lab.address('node1', 'public')}"
replication_address = "{lab.address('node1', 'replication')}"

[nodes.node2]
public_address = "{lab.address('node2', 'public')}"
replication_address = "{lab.address('node2', 'replication')}"

[witness]
name = "witness"
public_address = "{lab.address('witness', 'public')}"
replication_address = "{lab.address('witness', 'replication')}"

[etcd]
tls_dir = "{lab_pki(lab)}"
{etcd}
[volumes.db]
size = "{volume_size}"
port = 7789
backing = "db.img"
metadata = "db.meta"
ping_timeout = {ping_timeout}
cache = "{cache}"
after_split_brain = "{after_split_brain}"
{fence}{extra}"""
    path = etc / "cluster.toml"
    path.write_text(text)
    return path


def root_netns_handle(lab: Lab) -> Path:
    """A handle on this process's network namespace (where the lab's bridges are),
    bind-mounted in the lab's directory, so an agent inside a host namespace can run
    a lab fault there (`nsenter --net=HANDLE`). /proc/1/ns/net is no substitute:
    pid 1 may not be ours to inspect (containers). `tandem lab down` unmounts it
    with everything else mounted under the lab."""
    handle = lab.spec.dir / "etc" / "root-netns"
    handle.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(handle):
        handle.touch()
        run(["mount", "--bind", f"/proc/{os.getpid()}/ns/net", str(handle)])
    return handle


def lab_fencing(lab: Lab, timeout: float = 20.0, silent_after: int = 2) -> str:
    """The TOML of a cluster-wide lab fence: a node is fenced by crashing its lab host."""
    return (f'[fencing]\nagent = "lab"\nlab = "{lab.spec.name}"\nroot_netns = "{root_netns_handle(lab)}"\n'
            f'timeout = {timeout}\nleader_silent_after = {silent_after}\n')


def host_env(lab: Lab, host: str, config: Path) -> dict[str, str]:
    hd = lab.host_dir(host)
    return {"TANDEM_CONFIG": str(config), "TANDEM_NODE": host,
            "TANDEM_DATA_DIR": str(hd / "data"), "TANDEM_RUN_DIR": str(hd / "run")}


def tandem_argv(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "tandem"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "tandem.cli.main", *args]
