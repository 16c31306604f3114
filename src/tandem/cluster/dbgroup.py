"""The database resource group of one node, built from the cluster config:
volume Primary -> ext4 mount -> MariaDB -> DB VIP, started in that order and
stopped in reverse (Heartbeat's haresources line, as typed objects)."""

from __future__ import annotations

import math
from pathlib import Path

from tandem.cluster.resources import ResourceGroup, build
from tandem.cluster.resources.config import FilesystemConfig, MariaDBConfig, VipConfig
from tandem.cluster.volume_resource import VolumeResource, VolumeResourceConfig
from tandem.config import Config, db_tls
from tandem.errors import ConfigError
from tandem.volume.spec import VolumeSpec


def db_paths(cfg: Config, data_dir: Path, run_dir: Path) -> dict[str, Path]:
    db = cfg.database
    assert db is not None
    mount = db.mountpoint if db.mountpoint.is_absolute() else data_dir / db.mountpoint
    return {"mount": mount, "datadir": mount / "mysql", "fs_run": run_dir / "fs-db",
            "mariadb_run": run_dir / "mariadb"}


def build_db_group(cfg: Config, spec: VolumeSpec, data_dir: Path, run_dir: Path) -> ResourceGroup:
    db = cfg.database
    if db is None:
        raise ConfigError(["database: the agent needs a [database] section"])
    if db.password_file is None:
        raise ConfigError(["database.password_file: required by the agent (the application"
                           " user's password, mode 600)"])
    paths = db_paths(cfg, data_dir, run_dir)
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    tls = db_tls(cfg, spec.node)
    tls_files = {} if tls is None else {"tls_ca": tls.ca.resolve(), "tls_cert": tls.cert.resolve(),
                                        "tls_key": tls.key.resolve()}
    members = [
        VolumeResource(VolumeResourceConfig(name="volume", resource=spec.resource,
                                            control_socket=spec.control_socket)),
        build(FilesystemConfig(name="filesystem", device=spec.device_file, mountpoint=paths["mount"],
                               run_dir=paths["fs_run"], mkfs=True, mkfs_features=db.mkfs_features,
                               start_timeout=60,
                               write_through=spec.write_through,
                               stop_timeout=15, monitor_interval=cfg.agent.monitor_interval)),
        build(MariaDBConfig(name="mariadb", datadir=paths["datadir"], run_dir=paths["mariadb_run"],
                            require_mountpoint=paths["mount"], port=db.port, app_user=db.user,
                            app_databases=app_databases(cfg),
                            password_file=db.password_file.resolve(),
                            buffer_pool_size=db.buffer_pool_size,
                            binlog_expire_seconds=db.binlog_expire_seconds,
                            max_binlog_size=db.max_binlog_size, start_timeout=120,
                            stop_timeout=20, monitor_timeout=5, **tls_files)),
    ]
    if db.vip is not None:
        members.append(build(VipConfig(name="db-vip", address=db.vip.address,
                                       interface="pub0" if db.vip.network == "public" else "rep0",
                                       arp_count=1, lifetime=vip_lifetime(cfg.etcd.lease_ttl))))
    return ResourceGroup("db", members)


def app_databases(cfg: Config) -> list[str]:
    """[database] databases, and the management server's database if there is one."""
    names = list(cfg.database.databases) if cfg.database else []
    if cfg.mgmt is not None and cfg.mgmt.db_name not in names:
        names.append(cfg.mgmt.db_name)
    return names


def vip_lifetime(lease_ttl: float) -> int:
    """Kernel lifetime of a VIP the agent refreshes with every lease renewal.

    A frozen agent's node must drop the address by itself before another node
    can put it up: that node gets the key only once the lease expired in etcd
    (TTL after the last keepalive), and starts its VIP :func:`vip_takeover_grace`
    later still. The kernel counts whole seconds and removes an expired address
    up to 1/4 s late, so: the TTL less half a second, rounded down, at least 1.
    (It was TTL+1: the campaign saw the old and the new holder overlap for up
    to 1.3 s with a paused agent or a paused etcd member.)"""
    return max(1, math.floor(lease_ttl - 0.5))


VIP_REFRESH_SLACK = 0.5
"""How long after a lease keepalive was sent a VIP's lifetime may still be set (added
or refreshed) on it. :func:`vip_takeover_grace` assumes the old holder's last
lifetime was set at most this long after its last keepalive: its address lives
until at most keepalive + slack + lifetime + KERNEL_LATE, when the new holder (key
free at keepalive + TTL, then the grace) adds its own. A later refresh (an agent
paused between the two) skips; a later start waits for the next renewal. Half a
second: a keepalive's round trip on a loaded machine takes more than the quarter
second this was (the refreshes were skipped, and the starts that wait for a fresh
renewal waited in vain)."""

KERNEL_LATE = 0.25
"""How late the kernel removes an expired IPv4 address: its lifetime check runs at
the next whole second if that is within HZ/4 (devinet.c check_lifetime). (Up to a
second when another address's change ran the check just before: not counted. The
check runs in a kworker, so a machine too loaded to run it in time removes the
address later still: the campaign's overlap check has never caught it, but this is
a bound of the kernel's, not of ours.)"""


def vip_takeover_grace(lease_ttl: float) -> float:
    """How long a node that just took a VIP's key waits before adding the address:
    the previous holder's last lifetime was set at most VIP_REFRESH_SLACK after its
    last keepalive, so its address lives at most slack + lifetime + KERNEL_LATE
    beyond that keepalive, and the key became free a TTL after it. Zero for TTLs of
    2 s and more; 0.75 s with the lab's 1 s TTL."""
    return max(0.0, vip_lifetime(lease_ttl) + VIP_REFRESH_SLACK + KERNEL_LATE - lease_ttl)
