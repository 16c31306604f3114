"""A resource made of three commands from the config (Pacemaker's "anything").

For whatever has no dedicated kind: each operation runs its command to
completion under the operation's timeout (the whole process group is killed
when it runs over). A string runs with ``/bin/sh -c``, a list is an argv.
Exit codes of `monitor` follow OCF so existing scripts fit: 0 running,
7 not running, anything else failed.
"""

from __future__ import annotations

import os

from tandem.cluster.resources.base import CmdResult, Health, Resource, ResourceError, run_cmd
from tandem.cluster.resources.config import Command, ExecConfig

NOT_RUNNING = 7


class Exec(Resource):
    kind = "exec"
    config: ExecConfig

    async def _run(self, cmd: Command, timeout: float) -> CmdResult:
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        env = {**os.environ, "TANDEM_RESOURCE": self.name, **self.config.env}
        return await run_cmd(argv, timeout=timeout, env=env, cwd=self.config.cwd, check=False)

    async def _start(self) -> str:
        res = await self._run(self.config.start, self.config.start_timeout)
        if res.returncode != 0:
            raise ResourceError(f"start command exited {res.returncode}: {res.last_line}")
        return "start command succeeded"

    async def _stop(self) -> str:
        res = await self._run(self.config.stop, self.config.stop_timeout)
        if res.returncode != 0:
            raise ResourceError(f"stop command exited {res.returncode}: {res.last_line}")
        return "stop command succeeded"

    async def _monitor(self) -> Health:
        res = await self._run(self.config.monitor, self.config.monitor_timeout)
        if res.returncode == 0:
            return Health.ok("monitor command says running")
        if res.returncode == NOT_RUNNING:
            return Health.stopped("monitor command says not running")
        return Health.failed(f"monitor command exited {res.returncode}: {res.last_line}")
