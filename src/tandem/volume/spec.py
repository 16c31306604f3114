"""Where one node's copy of a volume lives and whom it replicates with.

Resolved once from the cluster config and the node's identity. Relative
backing/metadata paths are taken below the node's data directory
(`--data-dir`, `$TANDEM_DATA_DIR`, default /var/lib/tandem), which is how lab
hosts sharing one machine keep separate disks with one config file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tandem.config import Config
from tandem.errors import TandemError
from tandem.volume.genid import SplitBrainPolicy

DEFAULT_DATA_DIR = Path("/var/lib/tandem")
DEFAULT_RUN_DIR = Path("/run/tandem")


@dataclass(frozen=True)
class VolumeSpec:
    resource: str
    node: str
    peer: str
    size: int
    backing: Path
    metadata: Path
    address: str
    peer_address: str
    port: int
    ping_timeout: float
    resync_rate: int | None
    fence_peer_command: str | None
    run_dir: Path
    secret_file: Path
    write_through: bool = True  #: see config.Volume.cache
    after_split_brain: SplitBrainPolicy = SplitBrainPolicy.DISCONNECT  #: config.Volume.after_split_brain
    cluster: str = ""  #: config.Cluster.name: bound, with `resource`, into the link's secret
    force_secondary_after: float = 10.0  #: config.Volume.force_secondary_after (0: never)

    @property
    def control_socket(self) -> Path:
        return self.run_dir / f"volume-{self.resource}.sock"

    @property
    def mount_dir(self) -> Path:
        """Where the Primary's FUSE file appears: <run>/volume-<res>/disk."""
        return self.run_dir / f"volume-{self.resource}"

    @property
    def device_file(self) -> Path:
        return self.mount_dir / "disk"

    @property
    def dials(self) -> bool:
        """Exactly one side opens the TCP connection: the smaller name."""
        return self.node < self.peer


def data_dir(explicit: Path | None = None) -> Path:
    return explicit or Path(os.environ.get("TANDEM_DATA_DIR", str(DEFAULT_DATA_DIR)))


def run_dir(explicit: Path | None = None) -> Path:
    return explicit or Path(os.environ.get("TANDEM_RUN_DIR", str(DEFAULT_RUN_DIR)))


def node_name(cfg: Config, explicit: str | None = None) -> str:
    name = explicit or os.environ.get("TANDEM_NODE") or os.environ.get("TANDEM_LAB_HOST")
    if not name:
        import socket
        name = socket.gethostname().split(".")[0]
    if name not in cfg.nodes:
        raise TandemError(f"node {name!r} is not in nodes of the config ({', '.join(cfg.nodes)});"
                          " set TANDEM_NODE=NAME (or pass --node NAME where the command has it)")
    return name


def resolve(cfg: Config, resource: str, node: str, data: Path | None = None,
            run: Path | None = None) -> VolumeSpec:
    if resource not in cfg.volumes:
        known = ", ".join(cfg.volumes) or "none configured"
        raise TandemError(f"no volume {resource!r} in the config (volumes: {known})")
    vol = cfg.volumes[resource]
    peers = [n for n in cfg.nodes if n != node]
    if len(peers) != 1:
        raise TandemError(f"volume {resource}: exactly two data nodes are supported, config has"
                          f" {len(cfg.nodes)}")
    peer = peers[0]
    base = data_dir(data)

    def place(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    me, other = cfg.nodes[node], cfg.nodes[peer]
    return VolumeSpec(
        resource=resource, node=node, peer=peer, size=vol.size,
        backing=place(vol.backing), metadata=place(vol.metadata),
        address=str(me.replication_address), peer_address=str(other.replication_address),
        port=vol.port, ping_timeout=vol.ping_timeout, resync_rate=vol.resync_rate,
        fence_peer_command=vol.fence_peer_command, run_dir=run_dir(run),
        secret_file=cfg.cluster.secret.file, write_through=vol.cache == "write-through",
        after_split_brain=SplitBrainPolicy(vol.after_split_brain), cluster=cfg.cluster.name,
        force_secondary_after=vol.force_secondary_after)
