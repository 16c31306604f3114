"""The one TOML file that describes a tandem cluster.

Validated with pydantic so that every problem is reported at once, each as one
line that names the key and says what is wrong (`nodes.node2.replication_address:
not an IPv4 address`). Unknown keys are errors: a typo must never silently turn
into a default. Secrets are given as file paths and read only when needed, so the
parsed config (and anything that prints it) never holds a secret.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tandem.errors import ConfigError

if TYPE_CHECKING:
    from tandem.dcs.pki import HostTls

NAME_RE = r"^[a-z][a-z0-9-]{0,14}$"
Name = Annotated[str, Field(pattern=NAME_RE)]


def _address_text(v: Any) -> Any:
    # pydantic would take 12 as 0.0.0.12: an address must be written as text.
    if not isinstance(v, str | ipaddress.IPv4Address | ipaddress.IPv4Interface):
        raise ValueError("not an IPv4 address (write it as a string, like \"10.0.0.1\")")
    return v


SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})


def _not_a_system_schema(v: str) -> str:
    if v.lower() in SYSTEM_SCHEMAS:
        raise ValueError(f"{v!r} is one of MariaDB's own schemas: the application user never gets"
                         " rights on those")
    return v


#: a MariaDB database the application user owns
DATABASE_NAME_RE = r"^[A-Za-z0-9_]{1,64}$"
DatabaseName = Annotated[str, Field(pattern=DATABASE_NAME_RE), AfterValidator(_not_a_system_schema)]


def _keeps_the_journal(feature: str) -> str:
    if feature == "^has_journal":
        raise ValueError("^has_journal: the filesystem is mounted without fsck after a crash or"
                         " a failover, which only a journal makes safe (remove it)")
    return feature


#: fast_commit, ^metadata_csum: one mkfs.ext4 -O feature, never an option
Ext4Feature = Annotated[str, Field(pattern=r"^\^?[a-z0-9_]{1,32}$"), AfterValidator(_keeps_the_journal)]

EXT4_FEATURES: tuple[str, ...] = ()
"""What mkfs gives a filesystem resource's ext4 (and the database's volume, [database]
mkfs_features) unless its config says otherwise: ext4's own defaults.

``fast_commit`` is the one worth knowing, and it is a trade, measured here
(session 33), not a free speed-up:

- For: with protocol C every device write of a commit waits for the peer, so a
  commit costs its writes *in a row*. A MariaDB commit with the binlog
  (``sync_binlog=1``) fdatasyncs a binlog that has grown: its size is metadata,
  and a jbd2 commit writes its descriptor and metadata blocks, waits, then writes
  the commit block. A fast commit is one journal block after the data. Traced on
  a loop device (block_rq_issue): 4 writes in a row per commit without, 3 with;
  ``tandem bench volume`` measured the commit rate at 0.21-0.22x the local disk's
  with it, 0.16-0.17x without.
- Against: the mount after a crash replays the fast commits with *writes*, one
  after another, where jbd2's replay of full commits mostly reads (a crash image
  of MariaDB under load: 648 writes and 825 reads at mount with it, 10 writes and
  5,718 reads without). On the volume each of those writes is replicated, so the
  failover's mount took seconds: in the lab campaign the filesystem start after a
  failover took 1.2-4.8 s (median per seed), up to 16.5 s, against 0.12-0.16 s
  without, and the unavailability per schedule doubled.

A failover that takes seconds longer is the failure this product exists to
prevent, so fast_commit is left to those who want the commit rate more. Kernels:
its known data-loss bugs were fixed by 5.17; its replay could loop forever before
the fix for CVE-2024-43828 (6.1.106, 6.6.47, 6.10.6). ``tune2fs -O fast_commit``
or ``-O ^fast_commit`` changes an unmounted filesystem."""

IPv4 = Annotated[ipaddress.IPv4Address, BeforeValidator(_address_text)]
IPv4If = Annotated[ipaddress.IPv4Interface, BeforeValidator(_address_text)]

SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2,
              "g": 1024**3, "gib": 1024**3, "t": 1024**4, "tib": 1024**4}


def parse_size(value: Any) -> int:
    """Accept 1073741824, "1GiB", "512M" and return bytes."""
    if isinstance(value, bool):
        raise ValueError("not a size (use bytes or a string like '1GiB')")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in SIZE_UNITS:
            raise ValueError(f"not a size: {value!r} (use bytes or a string like '1GiB')")
        size = int(m.group(1)) * SIZE_UNITS[m.group(2).lower()]
    else:
        raise ValueError("not a size (use bytes or a string like '1GiB')")
    if size <= 0:
        raise ValueError("size must be positive")
    return size


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_admits_bool(a) for a in get_args(annotation))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_switch_as_number(cls, data: Any) -> Any:
        """true/false where a number or a text belongs: pydantic took `port = true`
        for port 1."""
        if isinstance(data, dict):
            wrong = [k for k, v in data.items() if isinstance(v, bool) and k in cls.model_fields
                     and not _admits_bool(cls.model_fields[k].annotation)]
            if wrong:
                raise ValueError("".join(f"{k}: true/false is not a value for this key;;" for k in wrong))
        return data


class SecretRef(Strict):
    """A secret kept in a file; only the path is part of the config."""

    file: Path

    def read(self) -> bytes:
        data = self.file.read_bytes().strip()
        if len(data) < 16:
            raise ConfigError([f"{self.file}: secret too short (need at least 16 bytes)"])
        return data


class Fencing(Strict):
    """How to power off a node that holds the leader key but looks dead, so the
    survivor may take over without waiting for its lease (see tandem.cluster.fencing).

    One flat table for every agent kind: the keys of the other kinds are
    refused, so a ``command`` under ``agent = "ipmitool"`` is an error, not
    silently ignored. Given cluster-wide (``[fencing]``) or for fencing one node
    (``[nodes.NAME.fencing]``, which replaces the cluster-wide one for it)."""

    agent: Literal["exec", "ipmitool", "lab"]
    timeout: float = Field(default=10.0, gt=0, le=300)  #: the whole fence, confirmation included
    retry_after: float = Field(default=5.0, gt=0, le=600)  #: after a failed fence of the same leader
    #: the leader counts as dead when etcd saw no keepalive of its lease for more than this
    #: many whole seconds (etcd reports a lease's remaining TTL in whole seconds)
    leader_silent_after: int = Field(default=2, ge=1, le=60)
    # exec
    command: list[str] | None = None  #: argv; "{node}" and "{address}" are replaced
    # ipmitool
    address: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.:-]{1,253}$")  #: the BMC
    user: str | None = Field(default=None, pattern=r"^[^\s]{1,64}$")
    #: the BMC password (passed to ipmitool -f, never read by us); mode 600, checked at load
    password_file: Path | None = None
    interface: Literal["lanplus", "lan"] = "lanplus"
    ipmitool: str = "ipmitool"  #: the executable (name on PATH or path)
    # lab
    lab: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9]{0,7}$")  #: the lab's name
    #: a handle (nsfs bind mount) on the network namespace the lab's bridges live in
    root_netns: Path | None = None

    @model_validator(mode="after")
    def _per_agent(self) -> Fencing:
        needs = {"exec": ("command",), "ipmitool": ("address", "user", "password_file"),
                 "lab": ("lab", "root_netns")}
        problems = [(k, f"required when agent = {self.agent!r}") for k in needs[self.agent]
                    if getattr(self, k) is None]
        problems += [(k, f"only for agent = {kind!r}") for kind, keys in needs.items()
                     if kind != self.agent for k in keys if getattr(self, k) is not None]
        if self.agent == "exec" and self.command is not None and not self.command:
            problems.append(("command", "must not be empty"))
        if problems:  # ";;"-terminated: _format_errors prefixes each with this table's key
            raise ValueError("".join(f"{k}: {m};;" for k, m in problems))
        return self


class Node(Strict):
    public_address: IPv4
    replication_address: IPv4 | None = None
    nofailover: bool = False
    fencing: Fencing | None = None  #: how to fence this node (overrides the cluster-wide [fencing])


class Witness(Strict):
    name: Name = "witness"
    public_address: IPv4
    replication_address: IPv4 | None = None


class Volume(Strict):
    size: int
    port: int = Field(default=7789, ge=1, le=65535)
    backing: Path
    metadata: Path
    protocol: Literal["C"] = "C"
    ping_timeout: float = Field(default=0.5, gt=0, le=30)
    resync_rate: int | None = None  # bytes/s cap, None = controller decides
    fence_peer_command: str | None = None
    #: "dcs": the volume daemon records the peer Outdated in the cluster's DCS itself,
    #: under this node's leader key (what `tandem fence-peer` does, without starting
    #: a process per attempt); for volumes run by the cluster agent. Either this or
    #: fence_peer_command, not both.
    fence_peer: Literal["dcs"] | None = None
    #: "write-through": a write completes only once durable on both disks, and the
    #: loop device on it is marked write-through, so ext4 sends no cache flushes
    #: (each one is a round trip to the peer). "write-back": writes complete when
    #: written on both sides; flushes make them durable (DRBD's default shape).
    cache: Literal["write-through", "write-back"] = "write-through"
    #: What to do when the nodes reconnect after both wrote (split brain), like DRBD's
    #: after-sb-*: "disconnect" refuses and waits for an operator's discard-my-data;
    #: the others pick a victim whose changes are overwritten by a bitmap resync from
    #: the other side: the side with no changes ("discard-zero-changes"), the Secondary
    #: ("discard-secondary") or the node that lost the leader key
    #: ("discard-least-recent-primary"). Both nodes must use the same value (the
    #: handshake refuses otherwise); one that cannot decide leaves the split brain refused.
    after_split_brain: Literal["disconnect", "discard-zero-changes", "discard-secondary",
                               "discard-least-recent-primary"] = "disconnect"
    #: Seconds a Primary's write lease (the cluster agent's leadership, pushed by the
    #: agent) may stay run out before the daemon demotes itself by force, like DRBD's
    #: on-suspended-primary-outdated force-secondary; 0: never. Until then the I/O is
    #: only held. A dead or hung agent (no watchdog, no fencing agent) otherwise left
    #: the volume Primary for good, and the peer, holding the leader key, could not
    #: promote while connected to a Primary. Off while the cluster is in maintenance.
    force_secondary_after: float = Field(default=10.0, ge=0, le=3600)

    @field_validator("size", "resync_rate", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else parse_size(v)

    @field_validator("force_secondary_after")
    @classmethod
    def _not_within_a_pause(cls, v: float) -> float:
        if 0 < v < 2:
            raise ValueError("must be 0 (never) or at least 2 seconds: a lease renewal that"
                             " is merely late must not demote the Primary")
        return v

    @model_validator(mode="after")
    def _one_fence_hook(self) -> Volume:
        if self.fence_peer is not None and self.fence_peer_command is not None:
            raise ValueError("fence_peer and fence_peer_command are both set; keep one"
                             " (fence_peer = \"dcs\" needs no command)")
        return self


class Vip(Strict):
    address: IPv4If
    network: Literal["public", "replication"] = "public"


class Database(Strict):
    """The database service the agent runs on the Primary: volume -> ext4 mount ->
    MariaDB -> DB VIP. Relative paths are below the node's data directory."""

    kind: Literal["mariadb"] = "mariadb"
    volume: Name = "db"
    mountpoint: Path
    port: int = Field(default=3306, ge=1, le=65535)
    vip: Vip | None = None
    user: str = Field(default="tandem", pattern=r"^[A-Za-z0-9_]{1,32}$")
    password_file: Path | None = None  #: the application user's password (mode 600)
    #: the databases the application user may use, with every privilege on them and
    #: none on the server (CloudStack's two; [mgmt] db_name is added to these)
    databases: list[DatabaseName] = Field(default_factory=lambda: ["cloud", "cloud_usage"],
                                          min_length=1)
    buffer_pool_size: str = Field(default="128M", pattern=r"^\d+[KMG]?$")
    #: binary logs older than this go at the next rotation (restart, size limit):
    #: without it they fill the volume (a lab campaign did, after 78 failovers)
    binlog_expire_seconds: int = Field(default=86400, ge=0)
    max_binlog_size: str = Field(default="256M", pattern=r"^\d+[KMG]?$")
    #: ext4 features for the mkfs of a blank volume, e.g. ["fast_commit"] (see EXT4_FEATURES)
    mkfs_features: list[Ext4Feature] = Field(default_factory=lambda: list(EXT4_FEATURES))
    #: TLS between MariaDB and its clients over TCP (the management servers, over the
    #: DB VIP): the server shows its node's certificate of the database CA in [etcd]
    #: tls_dir (db-ca.crt, HOST-db.crt/key: `tandem pki db`) and takes no TCP client
    #: without TLS; clients check it against that CA. None: on once that CA is there.
    tls: bool | None = None


ENDPOINT_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


def _endpoint(value: str) -> str:
    m = ENDPOINT_RE.match(value)
    if m is None or not 1 <= int(m.group(1)) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (like 10.100.1.11:2379; no scheme: TLS is"
                         " etcd.tls_dir's)")
    return value


class Etcd(Strict):
    embedded: bool = True
    endpoints: list[Annotated[str, AfterValidator(_endpoint)]] = Field(default_factory=list)
    client_port: int = Field(default=2379, ge=1, le=65535)
    peer_port: int = Field(default=2380, ge=1, le=65535)
    lease_ttl: int = Field(default=1, ge=1, le=60)
    op_timeout: float = Field(default=0.5, gt=0, le=10)
    #: the cluster's etcd PKI (ca.crt, HOST.crt, HOST.key; see tandem.dcs.pki): every
    #: client and peer of etcd shows a certificate of this CA (mutual TLS)
    tls_dir: Path | None = None
    #: an external etcd without TLS: leases and heartbeats unauthenticated, for a
    #: network where nothing else can reach it. Never for the embedded one.
    insecure: bool = False


class Agent(Strict):
    """Timing of the HA loop; see tandem.cluster.decide for the safety argument."""

    interval: float = Field(default=0.25, gt=0, le=10)
    margin: float = Field(default=0.3, gt=0, le=10)
    monitor_interval: float = Field(default=1.0, gt=0, le=60)
    nofailover: bool = False
    #: commands run on every role change of this node (TANDEM_ROLE_OLD/NEW, ... in their env)
    notify: list[list[str]] = Field(default_factory=list)
    notify_timeout: float = Field(default=10.0, gt=0, le=300)
    #: arm a watchdog device (softdog or hardware): the node resets if the agent hangs
    watchdog: Path | None = None
    #: a node whose resources failed stays out of the leader race this long; each failure
    #: within `failure_reset` s of the previous one doubles it, up to `failure_timeout_max`
    failure_timeout: float = Field(default=10.0, gt=0, le=3600)
    failure_timeout_max: float = Field(default=300.0, gt=0, le=86400)
    failure_reset: float = Field(default=600.0, gt=0, le=86400)
    #: an HA cycle busy this long since it began or since its last resource start or
    #: stop began is taken for a hung agent: the lease is no longer renewed (nor the
    #: watchdog fed), so the key and the volume's write lease run out and another node
    #: takes over. Keep it well above the longest start or stop timeout of a resource
    #: (MariaDB's start: 120 s); the agent warns if it is not 30 s above.
    cycle_timeout: float = Field(default=300.0, ge=10, le=86400)

    @model_validator(mode="after")
    def _penalties_grow(self) -> Agent:
        if self.failure_timeout_max < self.failure_timeout:
            raise ValueError(f"failure_timeout_max ({self.failure_timeout_max:g}) is below failure_timeout"
                             f" ({self.failure_timeout:g}): make it at least as long")
        return self


class Cluster(Strict):
    name: Name
    secret: SecretRef


class Mgmt(Strict):
    """The management tier cloned on every data node (optional): a management
    server on `server_port` of each node's public address, haproxy on `port`
    balancing across all of them, and the API VIP on a node whose haproxy is
    healthy. The servers reach MariaDB through the DB VIP as `db_user` (default:
    database.user, with database.password_file)."""

    port: int = Field(default=8080, ge=1, le=65535)  #: haproxy, the address clients use
    server_port: int = Field(default=8081, ge=1, le=65535)  #: each management server
    api_vip: Vip | None = None
    simhost: str = Field(default="http://127.0.0.1:8250", pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    db_name: DatabaseName = "cloud"
    db_user: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_]{1,32}$")
    dead_after: float = Field(default=3.0, gt=0, le=600)  #: heartbeat age before job takeover
    db_retry: float = Field(default=8.0, gt=0, le=600)  #: how long requests wait for the database
    #: refuse signed API requests without an `expires` (signatureVersion 2 never expires,
    #: so one seen on the wire can be replayed for ever); CloudStack clients that sign
    #: version 2 only (libcloud) then cannot call
    require_expires: bool = False
    max_expires_ahead: float = Field(default=3600.0, ge=1, le=7 * 86400)  #: latest accepted `expires`


class Config(Strict):
    cluster: Cluster
    nodes: dict[Name, Node]
    witness: Witness | None = None
    etcd: Etcd = Etcd()
    volumes: dict[Name, Volume] = Field(default_factory=dict)
    database: Database | None = None
    agent: Agent = Agent()
    mgmt: Mgmt | None = None
    fencing: Fencing | None = None  #: cluster-wide fencing agent (per node: nodes.NAME.fencing)

    def fencing_for(self, node: str) -> Fencing | None:
        """The fencing agent that powers `node` off, if any."""
        n = self.nodes.get(node)
        return (n.fencing if n is not None else None) or self.fencing

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        problems: list[tuple[str, str]] = []
        if len(self.nodes) < 2:
            problems.append(("nodes", "need at least two data nodes"))
        seen: dict[ipaddress.IPv4Address, str] = {}
        hosts: list[tuple[str, Node | Witness]] = [(f"nodes.{n}", v) for n, v in self.nodes.items()]
        if self.witness:
            hosts.append(("witness", self.witness))
            if self.witness.name in self.nodes:
                problems.append(("witness.name", f"{self.witness.name!r} is also a data node"))
        for where, host in hosts:
            for field in ("public_address", "replication_address"):
                addr = getattr(host, field)
                if addr is None:
                    continue
                if addr in seen:
                    problems.append((f"{where}.{field}", f"duplicate address {addr} (also {seen[addr]})"))
                else:
                    seen[addr] = f"{where}.{field}"
        for name, vol in self.volumes.items():
            for n, node in self.nodes.items():
                if node.replication_address is None:
                    problems.append((f"nodes.{n}.replication_address",
                                     f"required by volumes.{name} (the replication network)"))
            if vol.backing == vol.metadata:
                problems.append((f"volumes.{name}.metadata", "must differ from backing"))
        vip = self.database.vip.address.ip if self.database and self.database.vip else None
        if vip in seen:
            problems.append(("database.vip.address", f"{vip} is already {seen[vip]}"))
        if self.mgmt is not None:
            if self.database is None or self.database.vip is None:
                problems.append(("mgmt", "needs [database] with a vip (the servers use the DB VIP)"))
            if self.mgmt.port == self.mgmt.server_port:
                problems.append(("mgmt.server_port", "must differ from mgmt.port"))
            api = self.mgmt.api_vip.address.ip if self.mgmt.api_vip else None
            if api is not None and (api in seen or api == vip):
                problems.append(("mgmt.api_vip.address", f"{api} is already in use in this config"))
        if self.database and self.database.volume not in self.volumes:
            problems.append(("database.volume", f"no volume {self.database.volume!r} in volumes"))
        elif self.database:
            vol = self.volumes[self.database.volume]
            if vol.fence_peer is None and vol.fence_peer_command is None:
                # Without it, a Primary that lost its peer completes writes while the DCS
                # may still call the peer's disk UpToDate: a crash then promotes stale data.
                problems.append((f"volumes.{self.database.volume}.fence_peer",
                                 'required for the database\'s volume: set fence_peer = "dcs"'
                                 " (or a fence_peer_command)"))
        if self.database and self.database.tls and self.etcd.tls_dir is None:
            problems.append(("database.tls", "needs the cluster's PKI: set etcd.tls_dir (MariaDB"
                             " shows its host's certificate from it), or database.tls = false"))
        if self.agent.margin >= self.etcd.lease_ttl:
            problems.append(("agent.margin", "must be smaller than etcd.lease_ttl"))
        if any(not argv for argv in self.agent.notify):
            problems.append(("agent.notify", "a command must not be empty"))
        if not self.etcd.embedded and not self.etcd.endpoints:
            problems.append(("etcd.endpoints", "required when etcd.embedded = false"))
        if self.etcd.embedded and self.etcd.tls_dir is None:
            # An etcd that answers anyone lets any host on the network take the leader key.
            problems.append(("etcd.tls_dir", "required with embedded etcd (only holders of a"
                             " certificate of the cluster's CA may use it): create the directory"
                             " with `tandem pki init --config FILE`"))
        elif self.etcd.embedded and self.etcd.insecure:
            problems.append(("etcd.insecure", "only for an external etcd: the embedded one always"
                             " uses the cluster's PKI"))
        elif self.etcd.tls_dir is None and not self.etcd.insecure:
            problems.append(("etcd.tls_dir", "required: an etcd without TLS lets anyone who reaches"
                             " it take the leader key; give the directory of its client"
                             " certificates, or set etcd.insecure = true to accept that"))
        if problems:
            raise ValueError(";;".join(f"{k}: {m}" for k, m in problems))
        return self


MESSAGES = {
    "ip_v4_address": "not an IPv4 address",
    "ip_v4_interface": "not an IPv4 address with prefix (like 10.0.0.5/24)",
    "extra_forbidden": "unknown key (check the spelling; see the README for the keys)",
    "missing": "required key is missing",
    "int_type": "not an integer",
    "int_parsing": "not an integer",
    "float_type": "not a number",
    "float_parsing": "not a number",
    "bool_type": "not true or false",
    "bool_parsing": "not true or false",
    "string_type": "not a string",
    "dict_type": "not a table",
    "model_type": "not a table",
    "list_type": "not a list",
    "path_type": "not a path",
    "literal_error": None,  # pydantic's text lists the allowed values
}
#: what a value that does not match a pattern should look like
PATTERNS = {
    NAME_RE: "not a valid name (lowercase letters, digits, '-', at most 15)",
    DATABASE_NAME_RE: "not a valid database name (letters, digits, '_', at most 64)",
}


def error_message(e: Any) -> str:
    """One pydantic error in the words of our config errors."""
    if e["type"] == "string_pattern_mismatch":
        pattern = (e.get("ctx") or {}).get("pattern", "")
        return PATTERNS.get(pattern, f"not valid: must match {pattern}")
    return (MESSAGES.get(e["type"]) or e["msg"]).removeprefix("Value error, ")


def _format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = error_message(e)
        if e["type"] == "value_error" and ";;" in msg:  # a model validator's "key: problem;;" list
            lines.extend(f"{loc}.{part}" if loc else part for part in msg.split(";;") if part)
            continue
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError([f"{source}: {line}" for line in _format_errors(err)]) from None
    return cfg


def etcd_endpoints(cfg: Config, first: str | None = None) -> list[str]:
    """host:port of the etcd members; `first` (this node) is asked first."""
    if not cfg.etcd.embedded:
        return list(cfg.etcd.endpoints)
    hosts = [(n, str(node.public_address)) for n, node in cfg.nodes.items()]
    if cfg.witness:
        hosts.append((cfg.witness.name, str(cfg.witness.public_address)))
    hosts.sort(key=lambda h: h[0] != first)
    return [f"{addr}:{cfg.etcd.client_port}" for _, addr in hosts]


def etcd_tls(cfg: Config, host: str | None) -> HostTls | None:
    """The TLS files `host` presents to etcd, or None for a plain etcd (external only).
    Without a host (a command run outside a node's environment): the first host,
    or the lab's "client", whose key this process can read."""
    from tandem.dcs.pki import HostTls
    if cfg.etcd.tls_dir is None:
        return None
    if host is None:
        names = [*cfg.nodes, *([cfg.witness.name] if cfg.witness else []), "client"]
        host = next((n for n in names if os.access(cfg.etcd.tls_dir / f"{n}.key", os.R_OK)), names[0])
    return HostTls.of(cfg.etcd.tls_dir, host)


def db_tls_ca(cfg: Config) -> Path | None:
    """The CA a database client checks the server against (the database CA of the
    cluster's PKI, see tandem.dcs.pki.init_db), or None: plain TCP. With tls unset,
    TLS is on once that CA is there (`tandem pki db` makes it on a cluster made
    before it)."""
    tls_dir = cfg.etcd.tls_dir
    if cfg.database is None or cfg.database.tls is False or tls_dir is None:
        return None
    ca = tls_dir / "db-ca.crt"
    return ca if cfg.database.tls or ca.is_file() else None


def db_tls(cfg: Config, host: str) -> HostTls | None:
    """MariaDB's TLS files on `host`, or None when the database speaks plain TCP."""
    from tandem.dcs.pki import HostTls
    ca = db_tls_ca(cfg)
    return None if ca is None else HostTls.db_of(ca.parent, host)


def _fencing_password_problems(cfg: Config) -> list[str]:
    """The BMC password files (ipmitool -f) that others can read. A missing one is
    not refused here: only the nodes that fence need it (the witness, or a host
    running `tandem status`, may have none); the fencing step says so when used."""
    tables = [("fencing", cfg.fencing)] + [(f"nodes.{n}.fencing", node.fencing)
                                           for n, node in cfg.nodes.items()]
    problems = []
    for key, fencing in tables:
        if fencing is None or fencing.agent != "ipmitool" or fencing.password_file is None:
            continue
        pw = fencing.password_file
        if pw.is_file() and pw.stat().st_mode & 0o077:
            problems.append(f"{key}.password_file: {pw} is readable by others (chmod 600 it)")
    return problems


def _password_files_from(base: Path, cfg: Config) -> Config:
    """Relative password files are relative to the config file, as the secret and
    etcd.tls_dir are (they were taken from the working directory: `config check`
    judged another file than the agent read)."""
    def fix(fencing: Fencing | None) -> Fencing | None:
        pw = fencing.password_file if fencing is not None else None
        if fencing is None or pw is None or pw.is_absolute():
            return fencing
        return fencing.model_copy(update={"password_file": (base / pw).resolve()})

    update: dict[str, Any] = {"fencing": fix(cfg.fencing)}
    update["nodes"] = {n: node.model_copy(update={"fencing": fix(node.fencing)})
                       for n, node in cfg.nodes.items()}
    db = cfg.database
    if db is not None and db.password_file is not None and not db.password_file.is_absolute():
        update["database"] = db.model_copy(update={"password_file": (base / db.password_file).resolve()})
    return cfg.model_copy(update=update)


def load_config(path: str | Path, check_secrets: bool = True) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read ({e.strerror})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML ({e})"]) from None
    cfg = parse_config(data, str(path))
    secret = cfg.cluster.secret.file
    if not secret.is_absolute():
        secret = (path.parent / secret).resolve()
        cluster = cfg.cluster.model_copy(update={"secret": SecretRef(file=secret)})
        cfg = cfg.model_copy(update={"cluster": cluster})
    tls_dir = cfg.etcd.tls_dir
    if tls_dir is not None and not tls_dir.is_absolute():
        etcd = cfg.etcd.model_copy(update={"tls_dir": (path.parent / tls_dir).resolve()})
        cfg = cfg.model_copy(update={"etcd": etcd})
    cfg = _password_files_from(path.parent, cfg)
    if check_secrets:
        problems = []
        if cfg.etcd.tls_dir is not None and not (cfg.etcd.tls_dir / "ca.crt").is_file():
            problems.append(f"{path}: etcd.tls_dir: no CA certificate {cfg.etcd.tls_dir / 'ca.crt'}"
                            f" (create the PKI with `tandem pki init --config {path}`)")
        db_ca = db_tls_ca(cfg)
        if db_ca is not None and not db_ca.is_file():
            problems.append(f"{path}: database.tls: no database CA {db_ca} (create it with"
                            f" `tandem pki db --config {path}`, or set database.tls = false)")
        if not secret.is_file():
            problems.append(f"{path}: cluster.secret.file: no such file {secret} (create it with"
                            " `head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE`)")
        elif secret.stat().st_mode & 0o077:
            problems.append(f"{path}: cluster.secret.file: {secret} is readable by others"
                            " (chmod 600 it)")
        elif len(secret.read_bytes().strip()) < 16:
            problems.append(f"{path}: cluster.secret.file: {secret} holds fewer than 16 bytes (make"
                            " it anew: `head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE`)")
        db_pw = cfg.database.password_file if cfg.database is not None else None
        if db_pw is not None and db_pw.is_file() and db_pw.stat().st_mode & 0o077:
            problems.append(f"{path}: database.password_file: {db_pw} is readable by others"
                            " (chmod 600 it)")
        problems += [f"{path}: {p}" for p in _fencing_password_problems(cfg)]
        if problems:
            raise ConfigError(problems)
    return cfg
