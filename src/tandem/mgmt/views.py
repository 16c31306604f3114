"""Database rows turned into the objects CloudStack's API returns.

One function per object, with CloudStack's field names and types, so the
commands, the job results and the list answers all show the same shape.
Clients parse these fields by name (libcloud reads `nic[].ipaddress`,
`template[].ostypename`, `serviceoffering[].cpunumber`, ...).
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import datetime
from typing import Any

from tandem.mgmt.db import Cursor
from tandem.mgmt.migrations import NETWORK_OFFERING_ID


def cs_time(t: datetime | None) -> str | None:
    """CloudStack's date format: 2024-01-31T12:00:00+0000."""
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%S+0000")


def zone(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "description": row["description"],
            "networktype": row["networktype"], "allocationstate": row["allocationstate"],
            "securitygroupsenabled": False, "localstorageenabled": True, "zonetoken": row["id"][:8],
            "dhcpprovider": "VirtualRouter", "tags": []}


def service_offering(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "displaytext": row["displaytext"],
            "cpunumber": row["cpunumber"], "cpuspeed": row["cpuspeed"], "memory": row["memory"],
            "created": cs_time(row["created"]), "storagetype": "shared", "offerha": False,
            "limitcpuuse": False, "isvolatile": False, "issystem": False, "defaultuse": False,
            "iscustomized": False}


def template(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "displaytext": row["displaytext"],
            "ispublic": bool(row["public"]), "isfeatured": bool(row["featured"]), "isready": True,
            "passwordenabled": False, "format": row["format"], "hypervisor": "Simulator",
            "ostypeid": row["ostypeid"], "ostypename": row["ostypename"], "zoneid": row["zone_id"],
            "zonename": row["zonename"], "size": row["size"], "status": "Download Complete",
            "templatetype": "USER", "created": cs_time(row["created"]), "account": "system",
            "isextractable": False, "crossZones": False, "bootable": True, "tags": []}


def network(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "displaytext": row["displaytext"],
            "zoneid": row["zone_id"], "zonename": row["zonename"], "cidr": row["cidr"],
            "gateway": row["gateway"], "netmask": netmask(row["cidr"]), "state": row["state"],
            "type": row["type"],
            "traffictype": "Guest", "isdefault": True, "canusefordeploy": True, "broadcastdomaintype": "Vlan",
            "networkofferingid": NETWORK_OFFERING_ID, "networkofferingname": "DefaultSharedNetworkOffering",
            "networkofferingdisplaytext": "Offering for Shared networks", "networkofferingavailability":
            "Optional", "issystem": False, "related": row["id"], "acltype": "Domain",
            "specifyipranges": True, "restartrequired": False, "service": [], "tags": []}


def netmask(cidr: str) -> str:
    prefix = int(cidr.split("/")[1])
    return str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)


def os_type(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "description": row["description"], "oscategoryid": row["id"],
            "isuserdefined": False}


VM_SELECT = """SELECT v.*, z.name AS zonename, t.name AS templatename, t.displaytext AS templatedisplaytext,
    t.ostypeid, o.description AS osdisplayname, s.name AS serviceofferingname, s.cpunumber, s.cpuspeed,
    s.memory, n.name AS networkname, n.gateway, n.cidr, n.type AS networktype, a.name AS account,
    a.domain_id, d.name AS domain
    FROM vm v JOIN zone z ON z.id=v.zone_id JOIN template t ON t.id=v.template_id
    JOIN os_type o ON o.id=t.ostypeid JOIN service_offering s ON s.id=v.service_offering_id
    JOIN network n ON n.id=v.network_id JOIN account a ON a.id=v.account_id
    JOIN domain d ON d.id=a.domain_id"""


def vm_ip(seq: int, cidr: str = "10.1.0.0/16", gateway: str = "10.1.0.1") -> str:
    """The guest address of a VM, derived from its sequence number: a host address of
    its network other than the gateway. The sequence counts every VM ever deployed,
    so after as many VMs as the network has addresses it wraps around (the simulated
    hosts give VMs no real network). It ran past the /16 before: 10.1.256.2 for the
    64,000th VM, which libcloud's list_nodes fails on (review 35)."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
        gw = ipaddress.ip_address(gateway)
    except ValueError:
        net, gw = ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_address("10.1.0.1")
    first = int(net.network_address) + (1 if net.num_addresses > 2 else 0)
    usable = max(1, net.num_addresses - (2 if net.num_addresses > 2 else 0))
    skip_gw = net.num_addresses > 3 and gw in net and first <= int(gw) < first + usable
    n = seq % (usable - 1 if skip_gw else usable)
    addr = first + n
    if skip_gw and addr >= int(gw):
        addr += 1
    return str(ipaddress.ip_address(addr))


def virtual_machine(row: dict[str, Any]) -> dict[str, Any]:
    seq = int(row["seq"])
    mac = ":".join(f"{b:02x}" for b in (2, 0, *seq.to_bytes(4, "big")))
    nic = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "tandem-nic:" + row["id"])),
           "networkid": row["network_id"],
           "networkname": row["networkname"], "netmask": netmask(row["cidr"]),
           "gateway": row["gateway"], "ipaddress": vm_ip(seq, row["cidr"], row["gateway"]),
           "isdefault": True, "type": row["networktype"],
           "traffictype": "Guest", "macaddress": mac,
           "broadcasturi": "vlan://untagged", "isolationuri": "vlan://untagged"}
    vm = {"id": row["id"], "name": row["name"], "displayname": row["displayname"],
          "account": row["account"], "domainid": row["domain_id"], "domain": row["domain"],
          "created": cs_time(row["created"]), "state": row["state"], "haenable": False,
          "zoneid": row["zone_id"], "zonename": row["zonename"], "templateid": row["template_id"],
          "templatename": row["templatename"], "templatedisplaytext": row["templatedisplaytext"],
          "passwordenabled": False, "serviceofferingid": row["service_offering_id"],
          "serviceofferingname": row["serviceofferingname"], "cpunumber": row["cpunumber"],
          "cpuspeed": row["cpuspeed"], "memory": row["memory"], "guestosid": row["ostypeid"],
          "osdisplayname": row["osdisplayname"], "rootdeviceid": 0, "rootdevicetype": "ROOT",
          "hypervisor": "Simulator", "instancename": f"i-{seq}-VM", "isdynamicallyscalable": False,
          "securitygroup": [], "nic": [nic], "affinitygroup": [], "tags": [], "details": {}}
    if row.get("keypair"):
        vm["keypair"] = row["keypair"]
    if row.get("vmgroup"):
        vm["group"] = row["vmgroup"]
    return vm


def load_vm(cur: Cursor, vm_id: str) -> dict[str, Any] | None:
    cur.execute(VM_SELECT + " WHERE v.id=%s", (vm_id,))
    row = cur.fetchone()
    return virtual_machine(row) if row else None


JOB_CLASSES = {
    "deployVirtualMachine": "org.apache.cloudstack.api.command.user.vm.DeployVMCmd",
    "startVirtualMachine": "org.apache.cloudstack.api.command.user.vm.StartVMCmd",
    "stopVirtualMachine": "org.apache.cloudstack.api.command.user.vm.StopVMCmd",
    "rebootVirtualMachine": "org.apache.cloudstack.api.command.user.vm.RebootVMCmd",
    "destroyVirtualMachine": "org.apache.cloudstack.api.command.user.vm.DestroyVMCmd",
}


def async_job(row: dict[str, Any]) -> dict[str, Any]:
    job = {"accountid": row["account_id"], "userid": row["user_id"],
           "cmd": JOB_CLASSES.get(row["cmd"], row["cmd"]), "jobstatus": int(row["status"]),
           "jobprocstatus": 0, "jobresultcode": int(row["result_code"]), "jobid": row["id"],
           "created": cs_time(row["created"]), "jobinstancetype": row["instance_type"],
           "jobinstanceid": row["instance_id"]}
    if row["status"] != 0:
        job["jobresulttype"] = "object"
        job["jobresult"] = json.loads(row["result"]) if row["result"] else {}
        job["completed"] = cs_time(row["completed"])
    return job
