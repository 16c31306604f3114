"""Notify hooks: run with the role change in their environment, bounded, never blocking."""

from __future__ import annotations

import asyncio
import logging

from tandem.cluster.notify import Notifier


def test_hooks_get_the_change_and_do_not_block(tmp_path, caplog):
    out, go = tmp_path / "env", tmp_path / "go"
    # This hook finishes only after the test creates `go`, which it does once
    # role_changed() has returned: a blocking role_changed() would never see it succeed.
    ok = ["sh", "-c", f'while [ ! -e {go} ]; do sleep 0.02; done; env | grep ^TANDEM_ | sort > {out}']
    bad = ["sh", "-c", "echo broken hook >&2; exit 4"]
    slow = ["sh", "-c", "sleep 30"]
    caplog.set_level(logging.INFO, "tandem.agent.notify")

    async def main() -> None:
        n = Notifier([ok, bad, slow], timeout=1.0, node="node2", cluster="c1")
        n.role_changed("replica", "primary", epoch=7, leader="node2", reason="fenced node1")
        go.touch()
        await n.drain(timeout=5.0)

    asyncio.run(main())
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env["TANDEM_NODE"] == "node2" and env["TANDEM_CLUSTER"] == "c1"
    assert (env["TANDEM_ROLE_OLD"], env["TANDEM_ROLE_NEW"], env["TANDEM_ROLE"]) == ("replica", "primary",
                                                                                     "primary")
    assert env["TANDEM_EPOCH"] == "7" and env["TANDEM_LEADER"] == "node2"
    assert "failed with exit 4: broken hook" in caplog.text
    assert "killed after 1 s" in caplog.text
