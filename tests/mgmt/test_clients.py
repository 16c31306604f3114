"""Real CloudStack clients drive a full VM lifecycle against our server: the
`cs` package (Python API and CLI, both signing with signatureVersion 3) and
apache-libcloud's CloudStack driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from cs import CloudStack
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState, Provider

CS_CLI = Path(sys.executable).parent / "cs"


def test_cs_python_api_lifecycle(cloud):
    admin = cloud["admin"]
    api = CloudStack(endpoint=cloud["server"].endpoint, key=admin["apikey"], secret=admin["secretkey"],
                     poll_interval=0.1, job_timeout=60)
    zone = api.listZones()["zone"][0]
    offering = api.listServiceOfferings()["serviceoffering"][0]
    template = api.listTemplates(templatefilter="featured")["template"][0]
    vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=offering["id"],
                                  templateid=template["id"], name="web1", fetch_result=True)["virtualmachine"]
    assert vm["state"] == "Running" and vm["name"] == "web1" and vm["nic"][0]["ipaddress"].startswith("10.1.")
    assert api.stopVirtualMachine(id=vm["id"], fetch_result=True)["virtualmachine"]["state"] == "Stopped"
    assert api.startVirtualMachine(id=vm["id"], fetch_result=True)["virtualmachine"]["state"] == "Running"
    assert api.rebootVirtualMachine(id=vm["id"], fetch_result=True)["virtualmachine"]["state"] == "Running"
    listed = api.listVirtualMachines(fetch_list=True)
    assert [v["id"] for v in listed] == [vm["id"]]
    api.destroyVirtualMachine(id=vm["id"], expunge=True, fetch_result=True)
    assert api.listVirtualMachines() == {}
    jobs = api.listAsyncJobs()["asyncjobs"]
    assert len(jobs) == 5 and {j["jobstatus"] for j in jobs} == {1}
    ops = [e["op"] for e in cloud["host"].effects() if e.get("vm") == vm["id"]]
    assert ops == ["create", "stop", "start", "reboot", "destroy"]


def test_cs_cli_lifecycle(cloud):
    admin = cloud["admin"]
    env = {**os.environ, "CLOUDSTACK_ENDPOINT": cloud["server"].endpoint, "CLOUDSTACK_KEY": admin["apikey"],
           "CLOUDSTACK_SECRET": admin["secretkey"], "CLOUDSTACK_POLL_INTERVAL": "0.1"}

    def cs(*args: str) -> dict:
        out = subprocess.run([str(CS_CLI), *args], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)

    zone = cs("listZones")["zone"][0]["id"]
    offering = cs("listServiceOfferings")["serviceoffering"][0]["id"]
    template = cs("listTemplates", "templatefilter=executable")["template"][0]["id"]
    vm = cs("deployVirtualMachine", f"zoneid={zone}", f"serviceofferingid={offering}",
            f"templateid={template}", "name=cli1", "displayname=from the CLI")["virtualmachine"]
    assert vm["state"] == "Running" and vm["displayname"] == "from the CLI"
    assert cs("stopVirtualMachine", f"id={vm['id']}")["virtualmachine"]["state"] == "Stopped"
    assert cs("startVirtualMachine", f"id={vm['id']}")["virtualmachine"]["state"] == "Running"
    assert cs("listVirtualMachines", "state=Running")["count"] == 1
    assert cs("destroyVirtualMachine", f"id={vm['id']}")["virtualmachine"]["state"] == "Destroyed"
    assert cs("listVirtualMachines", "state=Destroyed")["virtualmachine"][0]["id"] == vm["id"]
    # the CLI signs with signatureVersion 3 and an expiry
    out = subprocess.run([str(CS_CLI), "--trace", "listZones"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0 and "signatureVersion=3" in out.stderr and "expires=" in out.stderr


def test_libcloud_lifecycle(cloud):
    admin = cloud["admin"]
    url = urlsplit(cloud["server"].endpoint)
    cls = get_driver(Provider.CLOUDSTACK)
    driver = cls(key=admin["apikey"], secret=admin["secretkey"], host=url.hostname, port=url.port,
                 path=url.path, secure=False)
    driver.connection.poll_interval = 0.1
    locations = driver.list_locations()
    sizes = driver.list_sizes()
    images = driver.list_images()
    assert locations[0].name == "zone1" and sizes[0].ram == 512 and images[0].name == "tandem-linux"
    [network] = driver.ex_list_networks()  # KeyError: networkofferingid
    assert network.name == "defaultGuestNetwork" and network.zoneid == locations[0].id
    assert network.networkofferingid and network.extra["traffic_type"] == "Guest"
    node = driver.create_node(name="lc1", size=sizes[0], image=images[0], location=locations[0],
                              ex_start_vm=True)
    assert node.state == NodeState.RUNNING and node.private_ips
    nodes = driver.list_nodes()
    assert [n.id for n in nodes] == [node.id]
    assert driver.reboot_node(node)
    assert driver.ex_stop(node) == "Stopped"
    assert driver.ex_start(node) == "Running"
    assert driver.destroy_node(node)
    assert driver.list_nodes()[0].state == NodeState.TERMINATED
    assert driver.destroy_node(node, ex_expunge=True)
    assert driver.list_nodes() == []
    effects = [e["op"] for e in cloud["host"].effects() if e.get("vm") == node.id]
    assert effects == ["create", "reboot", "stop", "start", "destroy"]
