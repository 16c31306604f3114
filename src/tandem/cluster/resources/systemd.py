"""A systemd unit: ``systemctl start|stop|is-active UNIT``.

For services that are installed as units on real nodes. ``systemctl start``
waits for the unit's own readiness (Type=notify etc.), bounded by our timeout.
Before anything, we check that systemd is the running init (``/run/systemd/
system`` exists, what sd_booted() checks), so a node without systemd (like
our test machine and its lab hosts) gets one clear sentence instead of
systemctl's "Failed to connect to bus" on every monitor.
"""

from __future__ import annotations

from pathlib import Path

from tandem.cluster.resources.base import Health, Resource, ResourceError, run_cmd
from tandem.cluster.resources.config import SystemdConfig

SYSTEMD_RUNTIME = Path("/run/systemd/system")


class Systemd(Resource):
    kind = "systemd"
    config: SystemdConfig

    def _require_systemd(self) -> None:
        if not SYSTEMD_RUNTIME.is_dir():
            raise ResourceError(f"systemd is not running on this node ({SYSTEMD_RUNTIME} is missing):"
                                f" cannot manage unit {self.config.unit}")

    async def _systemctl(self, verb: str, timeout: float) -> tuple[int, str]:
        self._require_systemd()
        res = await run_cmd([self.config.systemctl, "--no-ask-password", verb, self.config.unit],
                            timeout=timeout, check=False)
        return res.returncode, res.last_line

    async def _start(self) -> str:
        code, line = await self._systemctl("start", self.config.start_timeout)
        if code != 0:
            raise ResourceError(f"systemctl start {self.config.unit}: {line}")
        return f"unit {self.config.unit} started"

    async def _stop(self) -> str:
        code, line = await self._systemctl("stop", self.config.stop_timeout)
        if code != 0:
            raise ResourceError(f"systemctl stop {self.config.unit}: {line}")
        return f"unit {self.config.unit} stopped"

    async def _monitor(self) -> Health:
        code, state = await self._systemctl("is-active", self.config.monitor_timeout)
        unit = self.config.unit
        if code == 0 or state in ("active", "reloading"):
            return Health.ok(f"unit {unit} is {state}")
        if state == "inactive":
            return Health.stopped(f"unit {unit} is inactive")
        return Health.failed(f"unit {unit} is {state}")
