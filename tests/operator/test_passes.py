"""Stopping the operator lets the flywheel passes under way end, and starts no new one."""

from __future__ import annotations

import asyncio

from protege.operator.passes import Passes


async def test_stopping_waits_for_the_passes_under_way_and_refuses_new_ones() -> None:
    passes, ended = Passes(), asyncio.Event()

    async def one_pass() -> None:
        async with passes.one():
            await asyncio.sleep(0.2)  # a call-log read, say
            ended.set()

    running = asyncio.create_task(one_pass())
    await asyncio.sleep(0)  # it started
    assert passes.count == 1
    assert await passes.drain(5) and ended.is_set() and passes.stopping  # it ended before the drain did
    await running

    async with passes.one():
        assert not await passes.drain(0.05)  # one that outlives the wait is reported
