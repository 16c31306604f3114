"""The ``[[resources]]`` tables of the cluster config, one pydantic model per kind.

Why here and strict: a resource config decides what gets mounted, killed and
announced on the network, so unknown keys are errors (a typo must never fall
back to a default), paths must be absolute (the agent's working directory is
nobody's business), and every problem comes back as one line naming the key:
``resources.db.port: not an integer``. Secrets (the MariaDB application
password) are file paths, read only when used.

The models are ready to be embedded in :class:`tandem.config.Config` as
``resources: list[ResourceConfig]``; until then :func:`parse_resources`
validates a list on its own.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, field_validator, model_validator

from tandem.config import EXT4_FEATURES, DatabaseName, Ext4Feature, IPv4If, Name, Strict, error_message
from tandem.errors import ConfigError


def _absolute(p: Path) -> Path:
    if not p.is_absolute():
        raise ValueError("must be an absolute path")
    return p


AbsPath = Annotated[Path, AfterValidator(_absolute)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
Port = Annotated[int, Field(ge=1, le=65535)]
Command = str | list[str]  #: a string runs with /bin/sh -c, a list is an argv



class ResourceBase(Strict):
    """Keys every kind has. The restart threshold is Pacemaker's
    migration-threshold with failure-timeout: `max_failures` failures within
    `failure_window` seconds and the group gives up here (failover needed)."""

    name: Name
    start_timeout: Seconds = 30.0
    stop_timeout: Seconds = 30.0
    monitor_timeout: Seconds = 10.0
    monitor_interval: Seconds = 2.0
    max_failures: int = Field(default=3, ge=1, le=1000)
    failure_window: Seconds = 300.0


class FilesystemConfig(ResourceBase):
    kind: Literal["filesystem"] = "filesystem"
    device: AbsPath  #: a regular file (attached to a loop device) or a block device
    mountpoint: AbsPath
    run_dir: AbsPath  #: node-local: the state file naming the loop device we attached
    mkfs: bool = False  #: make ext4 when blkid finds no filesystem at all
    #: ext4 features for that mkfs (``mkfs.ext4 -O``), e.g. ["fast_commit"]: see EXT4_FEATURES
    mkfs_features: list[Ext4Feature] = Field(default_factory=lambda: list(EXT4_FEATURES))
    fstype: Literal["ext4"] = "ext4"
    options: list[str] = Field(default_factory=list)  #: extra mount options
    direct_io: bool = True
    #: the device completes a write only once it is durable (a write-through tandem
    #: volume): the loop device is marked write-through, so no cache flushes are sent
    write_through: bool = False
    probe: bool = True  #: monitor writes, fsyncs and reads back a small file
    #: monitor warns (in the log and in its status line) above this fraction of space used:
    #: a full disk does not fail over (the peer holds the same data) but wedges MariaDB
    warn_used: float = Field(default=0.9, gt=0, le=1)
    umount_retries: int = Field(default=3, ge=1, le=50)


class MariaDBConfig(ResourceBase):
    kind: Literal["mariadb"] = "mariadb"
    datadir: AbsPath  #: on the replicated filesystem
    run_dir: AbsPath  #: node-local: pid file, socket, log, state
    require_mountpoint: AbsPath | None = None  #: refuse to start unless this is mounted
    bind_address: str = "0.0.0.0"
    port: Port = 3306
    app_user: str = Field(default="tandem", pattern=r"^[A-Za-z0-9_]{1,32}$")
    app_host: str = Field(default="%", pattern=r"^[A-Za-z0-9_.%:-]{1,60}$")
    #: the only databases the application user may use (every privilege on them,
    #: none on the server: no FILE, SUPER or GRANT, no access to the ``mysql`` schema)
    app_databases: list[DatabaseName] = Field(min_length=1)
    password_file: AbsPath
    buffer_pool_size: str = Field(default="128M", pattern=r"^\d+[KMG]?$")
    log_file_size: str = Field(default="48M", pattern=r"^\d+[KMG]?$")
    binlog_expire_seconds: int = Field(default=86400, ge=0)
    max_binlog_size: str = Field(default="256M", pattern=r"^\d+[KMG]?$")
    max_connections: int = Field(default=400, ge=10, le=100000)
    extra_options: list[str] = Field(default_factory=list)
    mariadbd: str = "/usr/sbin/mariadbd"
    #: the system user mariadbd runs as: it owns the datadir and the server's socket
    #: and temporary directory, and nothing else on the node (the mariadb-server
    #: package creates ``mysql``)
    run_as: str = Field(default="mysql", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    #: TLS for TCP clients (PEM files, root's: the server gets a copy it can read):
    #: the CA, this host's certificate and key. Set: no TCP client without TLS.
    tls_ca: AbsPath | None = None
    tls_cert: AbsPath | None = None
    tls_key: AbsPath | None = None
    start_timeout: Seconds = 120.0
    stop_timeout: Seconds = 60.0

    @field_validator("bind_address")
    @classmethod
    def _addr(cls, v: str) -> str:
        ipaddress.IPv4Address(v)
        return v

    @model_validator(mode="after")
    def _tls_whole(self) -> MariaDBConfig:
        given = [f for f in ("tls_ca", "tls_cert", "tls_key") if getattr(self, f) is not None]
        if given and len(given) != 3:
            raise ValueError("tls_ca, tls_cert and tls_key go together (TLS needs all three)")
        return self

    @field_validator("extra_options")
    @classmethod
    def _opts(cls, v: list[str]) -> list[str]:
        for opt in v:
            if not opt.startswith("--"):
                raise ValueError(f"{opt!r}: options look like --name=value")
        return v

    @model_validator(mode="after")
    def _datadir_under_mount(self) -> MariaDBConfig:
        m = self.require_mountpoint
        if m is not None and m != self.datadir and m not in self.datadir.parents:
            raise ValueError("datadir: must be inside require_mountpoint")
        return self


class VipConfig(ResourceBase):
    kind: Literal["vip"] = "vip"
    address: IPv4If  #: with prefix, like "10.0.1.100/24"
    interface: str = Field(default="pub0", pattern=r"^[A-Za-z0-9_.@-]{1,15}$")
    arp_count: int = Field(default=2, ge=0, le=10)  #: gratuitous ARPs, 1 s apart
    #: while held (and refreshed by the agent), one more gratuitous ARP every this many
    #: seconds (0: never), like keepalived's garp_master_refresh: a host that was cut
    #: off when the VIP moved missed the announcement and would send to the old
    #: holder's MAC until its neighbour entry expired (15-45 s, seen in the campaign)
    garp_refresh: float = Field(default=1.0, ge=0, le=3600)
    #: seconds the kernel keeps the address after its last refresh (None: forever).
    #: The agent refreshes it with its lease, so a frozen agent loses the address.
    lifetime: int | None = Field(default=None, ge=1, le=3600)
    run_dir: AbsPath | None = None  #: node-local: remembers the announcing arping across restarts
    start_timeout: Seconds = 10.0
    stop_timeout: Seconds = 10.0
    monitor_timeout: Seconds = 5.0


class Backend(Strict):
    name: Name
    address: str
    port: Port

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str) -> str:
        ipaddress.IPv4Address(v)
        return v


class HaproxyConfig(ResourceBase):
    kind: Literal["haproxy"] = "haproxy"
    run_dir: AbsPath  #: config, pid, stats socket, log
    bind_address: str = "0.0.0.0"
    port: Port = 8080
    backends: list[Backend] = Field(min_length=1)
    health_path: str = Field(default="/health", pattern=r"^/[^\s]*$")
    check_interval_ms: int = Field(default=500, ge=50, le=60000)
    fall: int = Field(default=2, ge=1, le=100)
    rise: int = Field(default=1, ge=1, le=100)
    retries: int = Field(default=3, ge=0, le=100)
    connect_timeout_ms: int = Field(default=1000, ge=10)
    server_timeout_ms: int = Field(default=60000, ge=10)
    min_servers_up: int = Field(default=0, ge=0)  #: monitor FAILED below this many UP servers
    haproxy: str = "/usr/sbin/haproxy"

    @field_validator("bind_address")
    @classmethod
    def _addr(cls, v: str) -> str:
        ipaddress.IPv4Address(v)
        return v

    @model_validator(mode="after")
    def _unique(self) -> HaproxyConfig:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError("backends: server names must be unique")
        return self


class ExecConfig(ResourceBase):
    """Exit codes of `monitor`: 0 running, 7 not running (as OCF), others failed."""

    kind: Literal["exec"] = "exec"
    start: Command
    stop: Command
    monitor: Command
    env: dict[str, str] = Field(default_factory=dict)
    cwd: AbsPath | None = None


class OcfConfig(ResourceBase):
    kind: Literal["ocf"] = "ocf"
    provider: str = Field(default="heartbeat", pattern=r"^[A-Za-z0-9_.-]+$")
    agent: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  #: the OCF type, e.g. "IPaddr2"
    params: dict[str, str] = Field(default_factory=dict)  #: OCF_RESKEY_<key>
    ocf_root: AbsPath = Path("/usr/lib/ocf")

    @field_validator("params")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not k.replace("_", "").isalnum():
                raise ValueError(f"{k!r}: parameter names are letters, digits and '_'")
        return v


class SystemdConfig(ResourceBase):
    kind: Literal["systemd"] = "systemd"
    unit: str = Field(pattern=r"^[A-Za-z0-9@_.:\\-]+$")
    systemctl: str = "systemctl"


ResourceConfig = Annotated[
    FilesystemConfig | MariaDBConfig | VipConfig | HaproxyConfig | ExecConfig | OcfConfig | SystemdConfig,
    Field(discriminator="kind")]
KINDS = ("filesystem", "mariadb", "vip", "haproxy", "exec", "ocf", "systemd")

_ADAPTER: TypeAdapter[list[ResourceConfig]] = TypeAdapter(list[ResourceConfig])
_ONE: TypeAdapter[ResourceConfig] = TypeAdapter(ResourceConfig)


_BOUNDS = {"greater_than_equal": "must be at least {}", "greater_than": "must be more than {}",
           "less_than_equal": "must be at most {}", "less_than": "must be less than {}",
           "too_short": "needs at least {1} item(s)"}


def _lines(err: ValidationError, prefix: str, data: Any) -> list[str]:
    out = []
    for e in err.errors():
        loc = list(e["loc"])
        # A discriminated union puts the kind tag in the path: drop it; name the
        # resource by its name rather than its index when it has one.
        if prefix and loc and isinstance(loc[0], int):
            idx = loc.pop(0)
            item = data[idx] if isinstance(data, list) and idx < len(data) else None
            name = item.get("name") if isinstance(item, dict) else None
            loc.insert(0, name if isinstance(name, str) and name else idx)
            if len(loc) > 1 and loc[1] in KINDS:
                loc.pop(1)
        elif loc and loc[0] in KINDS:
            loc.pop(0)
        where = ".".join(str(p) for p in [prefix, *loc] if p != "")
        if e["type"] == "union_tag_invalid":
            msg = f"unknown kind {e['input'].get('kind')!r} (one of: {', '.join(KINDS)})" \
                if isinstance(e["input"], dict) else e["msg"]
            where = ".".join(str(p) for p in [prefix, *loc, "kind"] if p != "")
        elif e["type"] == "union_tag_not_found":
            msg = f"required key is missing (one of: {', '.join(KINDS)})"
            where = ".".join(str(p) for p in [prefix, *loc, "kind"] if p != "")
        elif e["type"] in _BOUNDS:
            msg = _BOUNDS[e["type"]].format(*e.get("ctx", {}).values())
        else:
            msg = error_message(e)
            if e["type"] == "value_error" and ": " in msg and msg.split(": ")[0].isidentifier() \
                    and e["loc"] and e["loc"][-1] != msg.split(": ")[0]:
                # a model-level check names its key itself
                key, msg = msg.split(": ", 1)
                where = f"{where}.{key}" if where else key
        out.append(f"{where}: {msg}" if where else msg)
    return out


def parse_resources(data: Any, source: str = "config") -> list[ResourceConfig]:
    """Validate a ``[[resources]]`` list; raise ConfigError with every problem,
    one line each, naming the key (``config: resources.db.port: not an integer``)."""
    try:
        items = _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise ConfigError([f"{source}: {ln}" for ln in _lines(err, "resources", data)]) from None
    seen: set[str] = set()
    problems = []
    for item in items:
        if item.name in seen:
            problems.append(f"{source}: resources.{item.name}.name: duplicate resource name")
        seen.add(item.name)
    if problems:
        raise ConfigError(problems)
    return items


def parse_resource(data: Any, source: str = "config") -> ResourceConfig:
    """Validate one resource table (a dict with `kind`)."""
    try:
        return _ONE.validate_python(data)
    except ValidationError as err:
        raise ConfigError([f"{source}: {ln}" for ln in _lines(err, "", data)]) from None
