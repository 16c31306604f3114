"""Read-only catalog commands: capabilities, APIs, zones, offerings, templates,
networks, OS types, and the empty lists clients call during a VM lifecycle."""

from __future__ import annotations

from tandem.mgmt import views
from tandem.mgmt.commands import PAGING, REGISTRY, Call, Param, command, empty_list
from tandem.mgmt.envelopes import CLOUDSTACK_VERSION, ListResult, Response, param_error
from tandem.mgmt.listing import Query, run_list


@command("listCapabilities")
async def list_capabilities(call: Call) -> Response:
    """Lists the capabilities of this cloud."""
    return Response({"capability": {
        "cloudstackversion": CLOUDSTACK_VERSION, "securitygroupsenabled": False,
        "userpublictemplateenabled": True, "supportELB": "false", "projectinviterequired": False,
        "allowusercreateprojects": False, "customdiskofferingmaxsize": 1024, "kvmsnapshotenabled": False,
        "allowuserviewdestroyedvm": True, "allowuserexpungerecovervm": True, "apilimitinterval": 1,
        "apilimitmax": 0, "dynamicrolesenabled": False, "kubernetesserviceenabled": False}})


@command("listApis", Param("name", description="API name"))
async def list_apis(call: Call) -> Response:
    """Lists the APIs this server answers, with their parameters and isasync."""
    name = call.params.get("name")
    apis = []
    for cmd in sorted(REGISTRY.values(), key=lambda c: c.name):
        if name and cmd.name.lower() != name.lower():
            continue
        if cmd.admin_only and not (call.caller and call.caller.is_admin):
            continue
        apis.append({"name": cmd.name, "description": cmd.description, "isasync": cmd.isasync,
                     "since": "4.0.0", "type": "", "related": "",
                     "params": [{"name": p.name, "type": p.type, "required": p.required,
                                 "description": p.description, "length": p.max_length} for p in cmd.params],
                     "response": []})
    if name and not apis:
        raise param_error(f"API {name} does not exist")
    return Response(ListResult("api", apis))


@command("listZones", Param("id", "uuid"), Param("name"), Param("available", "boolean"),
         Param("networktype"), Param("showcapacities", "boolean"), *PAGING)
async def list_zones(call: Call) -> Response:
    """Lists zones."""
    q = Query("SELECT * FROM zone", "name, id").filters(
        call, {"id": "id", "name": "name", "networktype": "networktype"}, ("name", "description"))
    return Response(await run_list(call, q, "zone", views.zone))


@command("listServiceOfferings", Param("id", "uuid"), Param("name"), Param("virtualmachineid", "uuid"),
         Param("zoneid", "uuid"), Param("issystem", "boolean"), *PAGING)
async def list_service_offerings(call: Call) -> Response:
    """Lists service offerings (VM sizes)."""
    q = Query("SELECT * FROM service_offering", "cpunumber, memory, name, id").filters(
        call, {"id": "id", "name": "name"}, ("name", "displaytext"))
    if call.params.get("issystem"):
        q.add("FALSE")
    return Response(await run_list(call, q, "serviceoffering", views.service_offering))


TEMPLATE_FILTERS = ("featured", "self", "selfexecutable", "sharedexecutable", "executable", "community",
                    "all")


@command("listTemplates", Param("templatefilter", required=True, description=", ".join(TEMPLATE_FILTERS)),
         Param("id", "uuid"), Param("name"), Param("zoneid", "uuid"), Param("hypervisor"),
         Param("listall", "boolean"), *PAGING)
async def list_templates(call: Call) -> Response:
    """Lists templates visible through the given templatefilter."""
    flt = call.params["templatefilter"].lower()
    if flt not in TEMPLATE_FILTERS:
        raise param_error(f"Unable to execute API command listtemplates due to invalid value. Invalid"
                          f" parameter templatefilter value={flt[:40]}: use one of"
                          f" {', '.join(TEMPLATE_FILTERS)}")
    q = Query("SELECT t.*, o.description AS ostypename, z.name AS zonename FROM template t"
              " JOIN os_type o ON o.id=t.ostypeid JOIN zone z ON z.id=t.zone_id", "t.name, t.id").filters(
        call, {"id": "t.id", "name": "t.name", "zoneid": "t.zone_id"}, ("t.name", "t.displaytext"))
    caller = call.caller
    assert caller is not None
    if flt == "featured":
        q.add("t.featured")
        if not caller.is_admin:  # featured is not public: a private one stays its owner's
            q.add("(t.public OR t.account_id = %s)", caller.account_id)
    elif flt in ("self", "selfexecutable"):
        q.add("t.account_id = %s", caller.account_id)
    elif flt in ("executable", "community", "sharedexecutable") or flt == "all" and not caller.is_admin:
        q.add("(t.public OR t.account_id = %s)", caller.account_id)
    if call.params.get("hypervisor", "Simulator").lower() != "simulator":
        q.add("FALSE")
    return Response(await run_list(call, q, "template", views.template))


@command("listNetworks", Param("id", "uuid"), Param("name"), Param("zoneid", "uuid"), Param("type"),
         Param("traffictype"), Param("isdefault", "boolean"), Param("canusefordeploy", "boolean"),
         Param("listall", "boolean"), Param("projectid", "uuid"), Param("vpcid", "uuid"), *PAGING)
async def list_networks(call: Call) -> Response:
    """Lists guest networks."""
    q = Query("SELECT n.*, z.name AS zonename FROM network n JOIN zone z ON z.id=n.zone_id", "n.name, n.id")
    q.filters(
        call, {"id": "n.id", "name": "n.name", "zoneid": "n.zone_id", "type": "n.type"},
        ("n.name", "n.displaytext"))
    if call.params.get("projectid") or call.params.get("vpcid"):
        q.add("FALSE")
    if call.params.get("traffictype", "guest").lower() != "guest":
        q.add("FALSE")
    return Response(await run_list(call, q, "network", views.network))


@command("listOsTypes", Param("id", "uuid"), Param("description"), Param("oscategoryid", "uuid"), *PAGING)
async def list_os_types(call: Call) -> Response:
    """Lists guest operating system types."""
    q = Query("SELECT * FROM os_type", "description, id").filters(
        call, {"id": "id", "description": "description"}, ("description",))
    return Response(await run_list(call, q, "ostype", views.os_type))


for _name, _item in (("listPublicIpAddresses", "publicipaddress"),
                     ("listPortForwardingRules", "portforwardingrule"),
                     ("listIpForwardingRules", "ipforwardingrule"),
                     ("listFirewallRules", "firewallrule"),
                     ("listEgressFirewallRules", "firewallrule"),
                     ("listSecurityGroups", "securitygroup"),
                     ("listSSHKeyPairs", "sshkeypair"),
                     ("listVolumes", "volume"),
                     ("listSnapshots", "snapshot"),
                     ("listDiskOfferings", "diskoffering"),
                     ("listNetworkOfferings", "networkoffering"),
                     ("listProjects", "project"),
                     ("listAffinityGroups", "affinitygroup"),
                     ("listTags", "tag"),
                     ("listVPCs", "vpc"),
                     ("listRouters", "router")):
    empty_list(_name, _item, Param("name"))
