"""The resource layer of the cluster agent (Pacemaker's resource model, small).

A :class:`Resource` has async ``start``/``stop`` (returning an
:class:`OpResult`) and ``monitor`` (returning a :class:`Health`), each bounded
by its configured timeout and each explained in one sentence. A
:class:`ResourceGroup` starts members in order, stops them in reverse, and
restarts or gives up per member restart threshold. Kinds, one module each:
filesystem, mariadb, vip, haproxy, exec, ocf, systemd. Configs are the pydantic
models in :mod:`.config`; :func:`build` turns one into its resource.

Resources act on the current network namespace: the agent runs inside its
node. ``python -m tandem.cluster.resources.run`` runs one operation from the
command line (how the tests drive a lab host).
"""

from __future__ import annotations

from tandem.cluster.resources.base import Health, HealthState, OpResult, Resource, ResourceError
from tandem.cluster.resources.config import ResourceConfig, parse_resource, parse_resources
from tandem.cluster.resources.exec_cmd import Exec
from tandem.cluster.resources.filesystem import Filesystem
from tandem.cluster.resources.group import GroupResult, ResourceGroup
from tandem.cluster.resources.haproxy import Haproxy
from tandem.cluster.resources.mariadb import MariaDB
from tandem.cluster.resources.ocf import Ocf
from tandem.cluster.resources.systemd import Systemd
from tandem.cluster.resources.vip import Vip

KIND_CLASSES: dict[str, type[Resource]] = {
    cls.kind: cls for cls in (Filesystem, MariaDB, Vip, Haproxy, Exec, Ocf, Systemd)
}


def build(config: ResourceConfig) -> Resource:
    """The resource for a validated config."""
    return KIND_CLASSES[config.kind](config)


__all__ = [
    "Exec", "Filesystem", "GroupResult", "Haproxy", "Health", "HealthState", "KIND_CLASSES", "MariaDB",
    "Ocf", "OpResult", "Resource", "ResourceConfig", "ResourceError", "ResourceGroup", "Systemd", "Vip",
    "build", "parse_resource", "parse_resources",
]
