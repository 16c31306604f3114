"""Notify hooks: configured commands run on every role change of this node
(Pacemaker's alert agents, Patroni's on_role_change callbacks).

They are told, never asked: each command runs in the background with a
deadline (``agent.notify_timeout``), the HA loop never waits for it, and a
failure or timeout is logged, not acted on. What happened is in the
environment:

    TANDEM_EVENT      role_change
    TANDEM_NODE       this node
    TANDEM_ROLE_OLD   primary | replica
    TANDEM_ROLE_NEW   primary | replica
    TANDEM_ROLE       the new role (short form)
    TANDEM_EPOCH      the leader epoch at the change (0 if none)
    TANDEM_LEADER     the leader key's holder at the change ("" if none)
    TANDEM_CLUSTER    the cluster name
    TANDEM_REASON     the decision that led to it, one sentence
"""

from __future__ import annotations

import asyncio
import logging
import time

from tandem.cluster.commands import run_bounded

log = logging.getLogger("tandem.agent.notify")


class Notifier:
    def __init__(self, commands: list[list[str]], timeout: float, node: str, cluster: str):
        self.commands = [list(c) for c in commands]
        self.timeout = timeout
        self.node = node
        self.cluster = cluster
        self._tasks: set[asyncio.Task] = set()

    def role_changed(self, old: str, new: str, *, epoch: int, leader: str | None, reason: str) -> None:
        """Start every hook for this change and return at once."""
        env = {"TANDEM_EVENT": "role_change", "TANDEM_NODE": self.node, "TANDEM_CLUSTER": self.cluster,
               "TANDEM_ROLE_OLD": old, "TANDEM_ROLE_NEW": new, "TANDEM_ROLE": new,
               "TANDEM_EPOCH": str(epoch), "TANDEM_LEADER": leader or "", "TANDEM_REASON": reason}
        for argv in self.commands:
            task = asyncio.create_task(self._run(argv, env), name=f"notify {argv[0]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, argv: list[str], env: dict[str, str]) -> None:
        t0 = time.monotonic()
        ran = await run_bounded(argv, t0 + self.timeout, env)
        took = time.monotonic() - t0
        if ran.code == 0:
            log.info("notify hook %s (%s -> %s) done in %.2f s", argv[0], env["TANDEM_ROLE_OLD"],
                     env["TANDEM_ROLE_NEW"], took)
        elif ran.code is None:
            log.warning("notify hook %s killed after %g s (notify_timeout)", argv[0], self.timeout)
        else:
            log.warning("notify hook %s failed with exit %s: %s", argv[0], ran.code, ran.tail())

    async def drain(self, timeout: float = 2.0) -> None:
        """At shutdown: give running hooks a moment, then cancel (which kills them)."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
