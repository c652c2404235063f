"""The daemon's shutdown stops every task, even one that swallowed its first cancellation."""

from __future__ import annotations

import asyncio
import contextlib

from agent.runtime.tasks import cancel_and_wait


async def test_a_swallowed_cancellation_is_sent_again() -> None:
    stages: list[str] = []

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # what 3.11's wait_for can do
            await asyncio.sleep(100)
        stages.append("swallowed")
        await asyncio.sleep(100)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], retry_s=0.05, give_up_s=5)
    assert task.cancelled()
    assert stages == ["swallowed"]


async def test_gives_up_and_says_so_on_a_task_that_never_stops() -> None:
    async def immortal() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(100)

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    assert not await cancel_and_wait([task], retry_s=0.02, give_up_s=0.1)
    task.cancel()
    task.get_coro().close()
