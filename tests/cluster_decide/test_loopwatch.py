"""The agent's event loop watched from a thread (tandem.cluster.loopwatch)."""

from __future__ import annotations

import asyncio
import logging
import time

from tandem.cluster.loopwatch import LoopWatch


def a_call_that_blocks_the_loop() -> None:
    time.sleep(0.8)  # a lookup held in the kernel, made on the loop's thread


def test_a_blocked_event_loop_is_reported_with_the_stack_that_blocks_it(caplog):
    caplog.set_level(logging.WARNING, logger="tandem.agent")
    watch = LoopWatch(stall=0.3)

    async def scenario() -> None:
        beat = asyncio.create_task(watch.beat())
        await asyncio.sleep(0.4)  # running: nothing to say
        assert not [r for r in caplog.records if "has not run" in r.getMessage()]
        a_call_that_blocks_the_loop()
        await asyncio.sleep(0.6)  # running again
        beat.cancel()

    watch.start()
    try:
        asyncio.run(scenario())
    finally:
        watch.stop()
    stuck = [r.getMessage() for r in caplog.records if "has not run" in r.getMessage()]
    assert len(stuck) == 1, stuck  # once per stall
    assert "a_call_that_blocks_the_loop" in stuck[0]
    assert any("runs again" in r.getMessage() for r in caplog.records)
