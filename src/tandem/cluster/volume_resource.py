"""The replicated volume as the first member of the database group.

Start = promote the local volume daemon (its FUSE file appears), stop = demote
it, monitor = it is Primary on a disk that has not failed. The daemon runs
independently of the agent (as the DRBD kernel module does of Pacemaker), so
the agent talks to it over its control socket, in a worker thread so the HA
loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from tandem.cluster.resources.base import Health, Resource, ResourceError
from tandem.cluster.resources.config import ResourceBase, Seconds
from tandem.errors import TandemError
from tandem.volume import control


class VolumeResourceConfig(ResourceBase):
    kind: Literal["volume"] = "volume"
    resource: str
    control_socket: Path
    start_timeout: Seconds = 15.0
    stop_timeout: Seconds = 15.0
    monitor_timeout: Seconds = 3.0


# Control calls get threads of their own: the default executor also runs file
# probes that can block on a suspended volume, and a starved executor must never
# delay the write-lease renewal that keeps the Primary writable.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="volume-ctl")


async def volume_call(socket: Path, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    loop = asyncio.get_running_loop()
    call = functools.partial(control.call, socket, cmd, timeout, **args)
    try:
        return await asyncio.wait_for(loop.run_in_executor(_EXECUTOR, call), timeout + 1)
    except TimeoutError:
        raise TandemError(f"volume daemon did not answer {cmd!r} within {timeout:g} s") from None


class VolumeResource(Resource):
    kind = "volume"

    def __init__(self, config: VolumeResourceConfig):
        super().__init__(config)
        self.socket = config.control_socket
        # Set by the agent before its promotion: the DCS records the peer's disk
        # Outdated under this node's key, so a promotion with the link down needs no
        # fence. That start only: a later one (the monitor restarting a volume daemon
        # that died) fences, for the peer may have resynced and been recorded
        # UpToDate since, and a volume told "peer Outdated" would write without it.
        self.peer_outdated = False
        #: Awaited before every start: the agent pushes its write lease, so that a
        #: restarted daemon (which has none: no bound) is never Primary without one.
        self.before_start: Callable[[], Awaitable[None]] | None = None
        # The leader epoch the start promotes under (set by the agent): kept in the
        # volume's metadata, it ranks the two sides of a split brain.
        self.epoch: int | None = None

    async def _start(self) -> str:
        peer_outdated, self.peer_outdated = self.peer_outdated, False
        try:
            if self.before_start is not None:
                await self.before_start()
            st = await volume_call(self.socket, "primary", timeout=self.config.start_timeout,
                                   peer_outdated=peer_outdated, epoch=self.epoch)
        except TandemError as e:
            raise ResourceError(f"volume {self.config.resource}: {e}") from None
        return f"volume {self.config.resource} is Primary (disk {st['disk']})"

    async def _stop(self) -> str:
        try:
            await volume_call(self.socket, "secondary", timeout=self.config.stop_timeout)
            return f"volume {self.config.resource} is Secondary"
        except TandemError as e:
            # Still held (a loop device or mount could not be released): tear it away.
            try:
                await volume_call(self.socket, "secondary", timeout=self.config.stop_timeout, force=True)
            except TandemError as e2:
                raise ResourceError(f"volume {self.config.resource}: {e2}") from None
            return f"volume {self.config.resource} forced to Secondary ({e})"

    async def _monitor(self) -> Health:
        try:
            st = await volume_call(self.socket, "status", timeout=self.config.monitor_timeout)
        except TandemError as e:
            return Health.failed(f"volume daemon unreachable: {e}")
        if st["disk"] in ("Failed", "Diskless"):
            return Health.failed(f"local disk is {st['disk']}")
        if st["role"] != "Primary":
            return Health.stopped(f"volume is {st['role']}")
        return Health.ok(f"Primary, disk {st['disk']}, peer {st['peer']['connection']}")
