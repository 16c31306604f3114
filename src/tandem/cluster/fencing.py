"""Fencing agents: power a node off and say whether that is confirmed.

A survivor may take over from a leader whose lease is still running only when
a fencing agent *confirmed* that the leader's node is off; anything else (a
failure, a timeout, an answer we cannot read) counts as not fenced, and the
survivor waits for the lease as it would without fencing. So every agent
reports :class:`FenceResult` with ``confirmed`` True only on positive proof,
and never raises: the agent's loop must not die of a broken BMC.

One small class per agent kind, one contract: ``await agent.fence(node,
address)`` within the configured timeout (the whole fence, confirmation
included). The commands run as subprocesses killed at the timeout, so a hung
BMC or script cannot hold the HA loop (which runs fences as background tasks
anyway).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tandem.cluster.commands import run_bounded
from tandem.config import Fencing


@dataclass(frozen=True, slots=True)
class FenceResult:
    """The outcome of one fence: `reason` is one sentence for logs, history and status."""

    node: str
    agent: str
    confirmed: bool
    reason: str
    seconds: float


class FenceAgent:
    """The common contract; subclasses implement :meth:`_fence`."""

    kind = ""

    def __init__(self, cfg: Fencing):
        self.cfg = cfg

    async def fence(self, node: str, address: str) -> FenceResult:
        """Power `node` off; confirmed only with proof, within ``cfg.timeout``."""
        t0 = time.monotonic()
        deadline = t0 + self.cfg.timeout
        try:
            confirmed, reason = await self._fence(node, address, deadline)
        except Exception as e:  # a fence agent never takes the HA loop down
            confirmed, reason = False, f"{type(e).__name__}: {e}"
        if not confirmed and time.monotonic() >= deadline:
            reason = f"no confirmation within {self.cfg.timeout:g} s ({reason})"
        return FenceResult(node, self.kind, confirmed, reason, round(time.monotonic() - t0, 3))

    async def _fence(self, node: str, address: str, deadline: float) -> tuple[bool, str]:
        raise NotImplementedError


class ExecFence(FenceAgent):
    """A configured command: exit 0 means the node is confirmed off. It gets the
    node in $TANDEM_FENCE_NODE / $TANDEM_FENCE_ADDRESS and "{node}" / "{address}"
    in its arguments (like Pacemaker's fence_* agents' plug/ip options)."""

    kind = "exec"

    async def _fence(self, node: str, address: str, deadline: float) -> tuple[bool, str]:
        argv = [a.replace("{node}", node).replace("{address}", address) for a in self.cfg.command or []]
        ran = await run_bounded(argv, deadline, {"TANDEM_FENCE_NODE": node, "TANDEM_FENCE_ADDRESS": address})
        if ran.code == 0:
            return True, f"{argv[0]} confirmed {node} is off"
        if ran.code is None:
            return False, f"{argv[0]} did not finish"
        return False, f"{argv[0]} exited with {ran.code}: {ran.tail()}"


class IpmiFence(FenceAgent):
    """IPMI power off through the node's BMC, then poll ``chassis power status``
    until it says off. The password stays in its file: ipmitool reads it (-f),
    so it is in no argv, environment or log line."""

    kind = "ipmitool"
    poll = 0.5

    def _argv(self, *cmd: str) -> list[str]:
        c = self.cfg
        return [c.ipmitool, "-I", c.interface, "-H", str(c.address), "-U", str(c.user),
                "-f", str(c.password_file), *cmd]

    async def _fence(self, node: str, address: str, deadline: float) -> tuple[bool, str]:
        pw = Path(str(self.cfg.password_file))
        if not os.access(pw, os.R_OK):
            return False, f"password file {pw} is not readable"
        off = await run_bounded(self._argv("chassis", "power", "off"), deadline)
        if off.code != 0:
            what = "did not finish" if off.code is None else f"exited with {off.code}: {off.tail()}"
            return False, f"ipmitool chassis power off {what}"
        last = "no status yet"
        while time.monotonic() < deadline:
            st = await run_bounded(self._argv("chassis", "power", "status"), deadline)
            if st.code == 0 and st.out.strip().lower().endswith("is off"):
                return True, f"the BMC at {self.cfg.address} reports {node}'s chassis power off"
            last = st.tail() if st.code is not None else "status did not finish"
            await asyncio.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))
        return False, f"the BMC never reported power off (last: {last})"


class LabFence(FenceAgent):
    """Fences a lab host the way a power switch would: the lab's crash fault
    (SIGKILL of everything on the host, cables out), the same code a test's
    crash runs, recorded in the same event log.

    The agent runs inside a host's network namespace but shares the mount
    namespace, so it can load the lab from its directory; only the network
    part of the crash (the host's cables on the lab bridges) must happen in
    the namespace where the bridges live, reached through `root_netns` (a
    handle the lab stack bind-mounts). It runs as a separate process entered
    there with nsenter, so the agent's own namespaces are never switched, and
    it imports only the lab (not the whole CLI: seconds saved on a busy machine)."""

    kind = "lab"
    CRASH = "import sys; from tandem.lab.lab import Lab; Lab.load(sys.argv[1]).faults.crash(sys.argv[2])"

    async def _fence(self, node: str, address: str, deadline: float) -> tuple[bool, str]:
        argv = ["nsenter", f"--net={self.cfg.root_netns}", "--",
                sys.executable, "-c", self.CRASH, str(self.cfg.lab), node]
        ran = await run_bounded(argv, deadline)
        if ran.code == 0:
            return True, f"lab {self.cfg.lab} crashed {node} (powered off)"
        if ran.code is None:
            return False, "the lab crash did not finish"
        return False, f"the lab crash exited with {ran.code}: {ran.tail()}"


AGENTS: dict[str, type[FenceAgent]] = {"exec": ExecFence, "ipmitool": IpmiFence, "lab": LabFence}


def fence_agent(cfg: Fencing) -> FenceAgent:
    return AGENTS[cfg.agent](cfg)
