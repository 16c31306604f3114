"""VM jobs: execute the plan that `vmstates` gives for the VM's current state.

Every step is safe to repeat after a takeover:

1. read the VM's state and look up the plan (see `vmstates` for why a
   transitional state means "carry on");
2. write the transitional state (owner-guarded) and ask the host, with the job
   id as request id, so the host applies the operation once;
3. write the final state and the job result in one owner-guarded transaction.
"""

from __future__ import annotations

from typing import Any

from tandem.mgmt import views
from tandem.mgmt.db import Cursor
from tandem.mgmt.envelopes import INTERNAL_ERROR, PARAM_ERROR, RESOURCE_UNAVAILABLE, ApiError
from tandem.mgmt.hostclient import HostUnavailable
from tandem.mgmt.jobs import JobContext, JobHandler
from tandem.mgmt.vmstates import VmState, plan


def _state(cur: Cursor, vm_id: str) -> str | None:
    cur.execute("SELECT state FROM vm WHERE id=%s", (vm_id,))
    row = cur.fetchone()
    return row["state"] if row else None


def _set_state(vm_id: str, state: str, removed: bool = False):
    def fn(cur: Cursor) -> None:
        cur.execute("UPDATE vm SET state=%s" + (", removed=NOW(6)" if removed else "") + " WHERE id=%s",
                    (state, vm_id))
    return fn


def _finish_vm(vm_id: str, state: str | None, removed: bool):
    """Final step: set the state (if any) and return the job result."""
    def fn(cur: Cursor) -> dict[str, Any]:
        if state is not None:
            _set_state(vm_id, state, removed)(cur)
        return {"virtualmachine": views.load_vm(cur, vm_id)}
    return fn


async def run_plan(ctx: JobContext, command: str, spec: dict[str, Any] | None = None) -> None:
    vm_id = ctx.job.instance_id
    state = await ctx.read(lambda cur: _state(cur, vm_id))
    p = plan(command, state)
    if p.refuse:
        await ctx.fail(ApiError(PARAM_ERROR, f"cannot {command} virtual machine {vm_id}: it is {state}"))
        return
    after = p.after
    if p.host_op is not None:
        if p.during is not None:
            # A failure from here on (a database error, an unknown outcome given up on)
            # leaves the VM as it was if the host surely never saw the request, in
            # Error otherwise (or when an earlier run left the transitional state).
            ctx.repair_on_failure = lambda: _set_state(
                vm_id, state if state != p.during and not ctx.maybe_applied else VmState.ERROR)
        if p.during is not None and p.during != state:
            await ctx.write(_set_state(vm_id, p.during))
        try:
            result = await ctx.host_op(p.host_op, vm_id, spec)
        except HostUnavailable as e:
            if ctx.maybe_applied and not ctx.unknown_too_long():
                raise  # the job manager keeps the job pending and runs it again
            # Never reached the host (or unknown for too long): Error, since the
            # VM's state was set to the transitional one.
            await ctx.fail(ApiError(RESOURCE_UNAVAILABLE, str(e)), _set_state(vm_id, VmState.ERROR))
            return
        gone = p.host_op == "destroy" and "does not exist" in (result.error or "")
        if not result.ok and not gone:
            known = result.state if result.state in (VmState.RUNNING, VmState.STOPPED) else VmState.ERROR
            await ctx.fail(ApiError(INTERNAL_ERROR, f"host refused: {result.error}"),
                           _set_state(vm_id, known))
            return
        if command == "deploy":
            after = VmState(result.state)
    await ctx.finish(_finish_vm(vm_id, after, p.removed))


async def deploy(ctx: JobContext) -> None:
    params = ctx.job.params
    spec = {"start": bool(params.get("startvm", True)),
            **{k: params.get(k) for k in ("name", "serviceofferingid", "templateid")}}
    await run_plan(ctx, "deploy", spec)


async def start(ctx: JobContext) -> None:
    await run_plan(ctx, "start")


async def stop(ctx: JobContext) -> None:
    await run_plan(ctx, "stop")


async def reboot(ctx: JobContext) -> None:
    await run_plan(ctx, "reboot")


async def destroy(ctx: JobContext) -> None:
    await run_plan(ctx, "expunge" if ctx.job.params.get("expunge") else "destroy")


HANDLERS: dict[str, JobHandler] = {
    "deployVirtualMachine": deploy,
    "startVirtualMachine": start,
    "stopVirtualMachine": stop,
    "rebootVirtualMachine": reboot,
    "destroyVirtualMachine": destroy,
}
