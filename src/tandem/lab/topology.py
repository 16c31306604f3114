"""What a lab looks like: hosts, networks, addresses and the names of everything
the lab creates in the kernel.

Pure data, no side effects. Every kernel object is named after the lab
(`<lab>-pub`, netns `<lab>-node1`, ...) so two labs (a developer's and CI's) can
live on one machine, and so `lab down` can find all of a lab's leftovers by name.
Each lab gets its own 10.B.0.0/16 (B derived from the name, probed for a free
one at `up`), so their addresses never collide either.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tandem.errors import LabError

Network = Literal["public", "replication"]
NETWORKS: tuple[Network, ...] = ("public", "replication")
NET_OCTET = {"public": 1, "replication": 2}
NET_SHORT = {"public": "p", "replication": "r"}
NET_IFNAME = {"public": "pub0", "replication": "rep0"}

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,14}$")

DEFAULT_ROOT = Path("/var/tmp/tandem-lab")


@dataclass(frozen=True)
class HostSpec:
    name: str
    index: int  # host part of its addresses, 11..250
    networks: tuple[Network, ...]


def default_hosts() -> list[HostSpec]:
    return [
        HostSpec("node1", 11, NETWORKS),
        HostSpec("node2", 12, NETWORKS),
        HostSpec("witness", 13, NETWORKS),
        HostSpec("client", 21, ("public",)),
    ]


def check_lab_name(name: str) -> str:
    if not LAB_NAME_RE.fullmatch(name):  # `$` also matches before a final newline
        raise LabError(f"lab name {name!r}: use 1-8 lowercase letters or digits, starting"
                       " with a letter (it prefixes interface names, which are short)")
    return name


def preferred_octet(lab: str) -> int:
    return 100 + zlib.crc32(lab.encode()) % 100


@dataclass(frozen=True)
class LabSpec:
    name: str
    octet: int  # the B of 10.B.0.0/16
    root: Path
    hosts: tuple[HostSpec, ...] = field(default_factory=lambda: tuple(default_hosts()))

    # --- names of kernel objects -------------------------------------------------
    def netns(self, host: str) -> str:
        return f"{self.name}-{host}"

    def bridge(self, net: Network) -> str:
        return f"{self.name}-{'pub' if net == 'public' else 'rep'}"

    def veth_root(self, host: str, net: Network) -> str:
        """The end of a host's cable that plugs into the bridge (root namespace)."""
        return f"{self.name}-{self.host(host).index}{NET_SHORT[net]}"

    @property
    def nft_table(self) -> str:
        return f"tandem_{self.name}"

    # --- addresses ---------------------------------------------------------------
    def subnet(self, net: Network) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{self.octet}.{NET_OCTET[net]}.0/24")

    def address(self, host: str, net: Network = "public") -> ipaddress.IPv4Address:
        spec = self.host(host)
        if net not in spec.networks:
            raise LabError(f"host {host} is not on the {net} network")
        return self.subnet(net).network_address + spec.index

    def gateway(self) -> ipaddress.IPv4Address:
        """The root namespace's address on the public bridge (the operator's seat)."""
        return self.subnet("public").network_address + 254

    def vip(self, n: int) -> ipaddress.IPv4Address:
        """Virtual addresses for services: 10.B.1.100 + n."""
        return self.subnet("public").network_address + 100 + n

    # --- places on disk ----------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.root / self.name

    def host_dir(self, host: str) -> Path:
        self.host(host)
        return self.dir / "hosts" / host

    @property
    def state_file(self) -> Path:
        return self.dir / "lab.json"

    @property
    def event_file(self) -> Path:
        return self.dir / "events.jsonl"

    # --- lookup ------------------------------------------------------------------
    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise LabError(f"no host {name!r} in lab {self.name} (hosts: {known})")

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def to_json(self) -> dict:
        d = asdict(self)
        d["root"] = str(self.root)
        return d

    @classmethod
    def from_json(cls, d: dict) -> LabSpec:
        hosts = tuple(HostSpec(h["name"], h["index"], tuple(h["networks"])) for h in d["hosts"])
        return cls(name=d["name"], octet=d["octet"], root=Path(d["root"]), hosts=hosts)
