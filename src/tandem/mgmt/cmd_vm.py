"""VM commands and async-job queries.

A VM command validates everything it can before it stores anything (a refused
request leaves no trace), then inserts the job — and for a deploy the VM row —
in one transaction, and answers the job id at once. The job runs later on the
server that owns it (see `jobs`), in the per-VM queue.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tandem.mgmt import views
from tandem.mgmt.commands import PAGING, Call, Param, command
from tandem.mgmt.db import Cursor
from tandem.mgmt.envelopes import RESOURCE_IN_USE, ApiError, ListResult, Response, param_error
from tandem.mgmt.listing import Query, run_list
from tandem.mgmt.migrations import NETWORK_ID

if TYPE_CHECKING:
    from tandem.mgmt.auth import Caller
    from tandem.mgmt.jobs import JobManager

HOSTNAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")  #: fullmatch: `$` matches before a final newline
VM_STATES = ("Starting", "Running", "Stopping", "Stopped", "Destroyed", "Expunging", "Error")


def _owner_scope(call: Call, q: Query, column: str) -> None:
    """Users see their account's objects; admins see all of them with listall."""
    caller = call.caller
    assert caller is not None
    if not (caller.is_admin and call.params.get("listall")):
        q.add(f"{column} = %s", caller.account_id)


def _find(cur: Cursor, table: str, id_: str, what: str, param: str) -> dict[str, Any]:
    cur.execute(f"SELECT * FROM {table} WHERE id=%s", (id_,))  # table names are ours, never user input
    row = cur.fetchone()
    if row is None:
        raise param_error(f"Unable to execute API command deployvirtualmachine due to invalid value."
                          f" Invalid parameter {param} value={id_}: no such {what}")
    return row


@command("deployVirtualMachine", Param("zoneid", "uuid", required=True),
         Param("serviceofferingid", "uuid", required=True), Param("templateid", "uuid", required=True),
         Param("name", max_length=63), Param("displayname"), Param("networkids", "list"),
         Param("startvm", "boolean"), Param("keypair"), Param("group"), Param("userdata", max_length=32768),
         Param("hypervisor"), Param("securitygroupnames", "list"), Param("securitygroupids", "list"),
         Param("projectid", "uuid"), Param("diskofferingid", "uuid"), Param("rootdisksize", "integer"),
         Param("affinitygroupids", "list"), Param("ipaddress"), isasync=True)
async def deploy_vm(call: Call) -> Response:
    """Creates and (unless startvm=false) starts a virtual machine."""
    p = call.params
    caller = call.caller
    assert caller is not None
    name = p.get("name") or f"VM-{uuid.uuid4()}"
    if p.get("name") and not HOSTNAME_RE.fullmatch(name):
        raise param_error("Invalid name: it must be a hostname (letters, digits, '-', starting with a letter,"
                          " at most 63 characters)")
    if p.get("projectid") or p.get("diskofferingid"):
        raise param_error("projects and data disks are not supported by this simulated cloud")
    networks = p.get("networkids") or [NETWORK_ID]
    start = p.get("startvm", True)
    server = call.server
    vm_id = str(uuid.uuid4())

    def write(cur: Cursor) -> str:
        _find(cur, "zone", p["zoneid"], "zone", "zoneid")
        _find(cur, "service_offering", p["serviceofferingid"], "service offering", "serviceofferingid")
        template = _find(cur, "template", p["templateid"], "template", "templateid")
        if not template["public"] and template["account_id"] != caller.account_id:
            raise param_error(f"template {p['templateid']} is not available to this account")
        for net in networks:
            try:
                _find(cur, "network", str(uuid.UUID(net)), "network", "networkids")
            except ValueError:
                raise param_error(f"Invalid parameter networkids value={net[:40]}: not a UUID") from None
        # Lock the account row: concurrent deploys of one account check names one at a time.
        cur.execute("SELECT id FROM account WHERE id=%s FOR UPDATE", (caller.account_id,))
        cur.execute("SELECT id FROM vm WHERE account_id=%s AND name=%s AND removed IS NULL",
                    (caller.account_id, name))
        if cur.fetchone():
            raise ApiError(RESOURCE_IN_USE, f"a virtual machine named {name} already exists in account"
                                            f" {caller.account}")
        cur.execute("INSERT INTO vm (id, name, displayname, account_id, zone_id, template_id,"
                    " service_offering_id, network_id, keypair, vmgroup, state)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (vm_id, name, p.get("displayname") or name, caller.account_id, p["zoneid"],
                     p["templateid"],
                     p["serviceofferingid"], str(uuid.UUID(networks[0])), p.get("keypair"), p.get("group"),
                     "Starting" if start else "Stopped"))
        params = {"startvm": start, "name": name, "serviceofferingid": p["serviceofferingid"],
                  "templateid": p["templateid"]}
        return server.jobs.submit(cur, "deployVirtualMachine", "VirtualMachine", vm_id, params,
                                  caller.account_id, caller.user_id)

    job_id = await server.db.write(write)
    server.jobs.kick()
    return Response({"id": vm_id, "jobid": job_id})


def queue_vm_job(cur: Cursor, jobs: JobManager, caller: Caller, vm_id: str, cmd: str,
                 params: dict[str, Any]) -> str:
    """Queue `cmd` on VM `vm_id` (in the caller's transaction), after checking it exists
    and is the caller's.

    The VM row is locked first, so the jobs of one VM are inserted one transaction
    after the other: their queue order (``seq``, given at INSERT) is their commit
    order. Without the lock, two stops accepted during a database failover took
    their numbers in one order and committed in the other; the dispatcher saw only
    the later one, ran it as the head of the queue, then ran the other as well, on
    the same VM at the same time (torture 28: the simulated host saw both).
    """
    cur.execute("SELECT account_id, state FROM vm WHERE id=%s AND removed IS NULL FOR UPDATE", (vm_id,))
    row = cur.fetchone()
    if row is None or (row["account_id"] != caller.account_id and not caller.is_admin):
        raise param_error(f"Unable to find virtual machine with id {vm_id}")
    if row["state"] == "Expunging":
        raise param_error(f"virtual machine {vm_id} is being expunged")
    return jobs.submit(cur, cmd, "VirtualMachine", vm_id, params, row["account_id"], caller.user_id)


async def _vm_job(call: Call, cmd: str, params: dict[str, Any]) -> Response:
    """Queue `cmd` on the VM named by `id`."""
    caller = call.caller
    assert caller is not None
    vm_id = call.params["id"]
    server = call.server
    job_id = await server.db.write(lambda cur: queue_vm_job(cur, server.jobs, caller, vm_id, cmd, params))
    server.jobs.kick()
    return Response({"jobid": job_id})


ID = Param("id", "uuid", required=True, description="the ID of the virtual machine")


@command("startVirtualMachine", ID, Param("hostid", "uuid"), isasync=True)
async def start_vm(call: Call) -> Response:
    """Starts a stopped virtual machine."""
    return await _vm_job(call, "startVirtualMachine", {})


@command("stopVirtualMachine", ID, Param("forced", "boolean"), isasync=True)
async def stop_vm(call: Call) -> Response:
    """Stops a running virtual machine."""
    return await _vm_job(call, "stopVirtualMachine", {"forced": call.params.get("forced", False)})


@command("rebootVirtualMachine", ID, isasync=True)
async def reboot_vm(call: Call) -> Response:
    """Reboots a running virtual machine."""
    return await _vm_job(call, "rebootVirtualMachine", {})


@command("destroyVirtualMachine", ID, Param("expunge", "boolean"), Param("volumeids", "list"), isasync=True)
async def destroy_vm(call: Call) -> Response:
    """Destroys a virtual machine; with expunge=true it is removed for good."""
    return await _vm_job(call, "destroyVirtualMachine", {"expunge": call.params.get("expunge", False)})


@command("listVirtualMachines", Param("id", "uuid"), Param("ids", "list"), Param("name"), Param("state"),
         Param("zoneid", "uuid"), Param("templateid", "uuid"), Param("serviceofferingid", "uuid"),
         Param("networkid", "uuid"), Param("listall", "boolean"), Param("account"), Param("domainid", "uuid"),
         Param("details", "list"), Param("projectid", "uuid"), Param("hostid", "uuid"), *PAGING)
async def list_vms(call: Call) -> Response:
    """Lists virtual machines (expunged ones are gone)."""
    q = Query(views.VM_SELECT, "v.seq").filters(
        call, {"id": "v.id", "name": "v.name", "zoneid": "v.zone_id", "templateid": "v.template_id",
               "serviceofferingid": "v.service_offering_id", "networkid": "v.network_id",
               "account": "a.name", "domainid": "a.domain_id"}, ("v.name", "v.displayname"))
    q.add("v.removed IS NULL")
    if "state" in call.params:
        state = call.params["state"]
        match = [s for s in VM_STATES if s.lower() == state.lower()]
        if not match:
            raise param_error(f"Invalid parameter state value={state[:40]}: use one of"
                              f" {', '.join(VM_STATES)}")
        q.add("v.state = %s", match[0])
    if call.params.get("ids"):
        ids = call.params["ids"]
        q.add("v.id IN (" + ",".join(["%s"] * len(ids)) + ")", *ids)
    if call.params.get("projectid"):
        q.add("FALSE")
    _owner_scope(call, q, "v.account_id")
    return Response(await run_list(call, q, "virtualmachine", views.virtual_machine))


@command("queryAsyncJobResult", Param("jobid", "uuid", required=True))
async def query_async_job_result(call: Call) -> Response:
    """Answers the status (0 pending, 1 succeeded, 2 failed) and result of a job."""
    caller = call.caller
    assert caller is not None
    job_id = call.params["jobid"]

    def read(cur: Cursor) -> dict[str, Any] | None:
        cur.execute("SELECT * FROM async_job WHERE id=%s", (job_id,))
        return cur.fetchone()

    row = await call.server.db.read(read)
    if row is None or (row["account_id"] != caller.account_id and not caller.is_admin):
        raise param_error(f"Unable to find async job with id {job_id}")
    return Response(views.async_job(row))


@command("listAsyncJobs", Param("startdate"), Param("listall", "boolean"), Param("account"),
         Param("domainid", "uuid"), *PAGING)
async def list_async_jobs(call: Call) -> Response:
    """Lists async jobs, newest first."""
    q = Query("SELECT * FROM async_job", "seq DESC")
    if call.params.get("startdate"):
        try:
            since = datetime.fromisoformat(call.params["startdate"].replace(" ", "+"))
            if since.tzinfo is not None:  # in UTC, year 1 or 9999 may fall outside (OverflowError)
                since = since.astimezone(UTC).replace(tzinfo=None)
        except (ValueError, OverflowError):
            raise param_error("Invalid parameter startdate: use yyyy-MM-dd'T'HH:mm:ssZ") from None
        q.add("created >= %s", since)
    _owner_scope(call, q, "account_id")
    result: ListResult = await run_list(call, q, "asyncjobs", views.async_job)
    return Response(result)
