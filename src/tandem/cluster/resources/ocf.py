"""OCF resource agents (``<ocf_root>/resource.d/<provider>/<agent>``).

Lets tandem reuse the large library of existing agents (resource-agents) the
way Pacemaker does: the agent is run with the action as its only argument,
parameters as ``OCF_RESKEY_<name>`` environment variables, and the OCF
environment (``OCF_ROOT``, ``OCF_RA_VERSION_*``, ``OCF_RESOURCE_INSTANCE``,
``OCF_RESKEY_CRM_meta_timeout`` in ms, which many agents use to pace
themselves). Exit codes per the OCF spec: 0 success, 7 not running, 8/9
promoted (ok/failed), and the errors below, whose names go into the sentence
so the operator sees "not configured" rather than "exit 6".
"""

from __future__ import annotations

import os

from tandem.cluster.resources.base import CmdResult, Health, Resource, ResourceError, run_cmd
from tandem.cluster.resources.config import OcfConfig

OCF_CODES = {
    0: "success", 1: "generic error", 2: "invalid arguments", 3: "unimplemented feature",
    4: "insufficient privileges", 5: "not installed", 6: "not configured", 7: "not running",
    8: "running promoted", 9: "failed promoted",
}
OCF_SUCCESS, OCF_NOT_RUNNING, OCF_RUNNING_PROMOTED = 0, 7, 8


def describe(code: int) -> str:
    return f"exit {code} ({OCF_CODES.get(code, 'not an OCF code')})"


class Ocf(Resource):
    kind = "ocf"
    config: OcfConfig

    @property
    def path(self):
        c = self.config
        return c.ocf_root / "resource.d" / c.provider / c.agent

    async def _action(self, action: str, timeout: float) -> CmdResult:
        c = self.config
        if not os.access(self.path, os.X_OK):
            raise ResourceError(f"OCF agent {self.path} is missing or not executable")
        env = {
            **os.environ, "OCF_ROOT": str(c.ocf_root), "OCF_RA_VERSION_MAJOR": "1",
            "OCF_RA_VERSION_MINOR": "1", "OCF_RESOURCE_INSTANCE": self.name,
            "OCF_RESOURCE_TYPE": c.agent, "OCF_RESOURCE_PROVIDER": c.provider,
            "OCF_RESKEY_CRM_meta_timeout": str(int(timeout * 1000)),
            **{f"OCF_RESKEY_{k}": v for k, v in c.params.items()},
        }
        return await run_cmd([str(self.path), action], timeout=timeout, env=env, check=False)

    async def _start(self) -> str:
        res = await self._action("start", self.config.start_timeout)
        if res.returncode != OCF_SUCCESS:
            raise ResourceError(f"{self.config.agent} start: {describe(res.returncode)}: {res.last_line}")
        return f"ocf:{self.config.provider}:{self.config.agent} started"

    async def _stop(self) -> str:
        res = await self._action("stop", self.config.stop_timeout)
        # The spec wants 0 from stopping a stopped resource; 7 means the same.
        if res.returncode not in (OCF_SUCCESS, OCF_NOT_RUNNING):
            raise ResourceError(f"{self.config.agent} stop: {describe(res.returncode)}: {res.last_line}")
        return f"ocf:{self.config.provider}:{self.config.agent} stopped"

    async def _monitor(self) -> Health:
        res = await self._action("monitor", self.config.monitor_timeout)
        if res.returncode in (OCF_SUCCESS, OCF_RUNNING_PROMOTED):
            return Health.ok(f"{self.config.agent} monitor: {describe(res.returncode)}")
        if res.returncode == OCF_NOT_RUNNING:
            return Health.stopped(f"{self.config.agent} monitor: {describe(res.returncode)}")
        return Health.failed(f"{self.config.agent} monitor: {describe(res.returncode)}: {res.last_line}")
