"""Supervised loops (one copy for both daemons): restarts, readiness, and a shutdown that stops
every task, even one that swallowed its first cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from daemonkit.supervisor import LoopFactory, Supervisor, cancel_and_wait


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


async def test_a_loop_that_dies_is_restarted_counted_and_shown_down_meanwhile() -> None:
    runs: list[int] = []
    restarted: list[str] = []

    third = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("boom")
        third.set()
        await asyncio.sleep(100)

    loops = Supervisor("t", first_delay=0.05, on_restart=restarted.append)
    loops.start("flaky", flaky)
    await asyncio.sleep(0.01)
    assert loops.down() == ["flaky"]  # dead, waiting for its restart
    async with asyncio.timeout(5):
        await third.wait()
    assert loops.down() == []
    assert loops.restarts["flaky"] == 2 and restarted == ["flaky", "flaky"]
    assert await loops.close()


async def test_a_returning_loop_ends_unless_it_is_meant_to_run_forever() -> None:
    calls = {"once": 0, "forever": 0}
    thrice = asyncio.Event()

    async def once() -> None:
        calls["once"] += 1

    async def forever() -> None:
        calls["forever"] += 1
        if calls["forever"] == 3:
            thrice.set()

    ending = Supervisor(first_delay=0.01)
    ending.start("once", once)
    looping = Supervisor(first_delay=0.01, restart_on_return=True)
    looping.start("forever", forever)
    async with asyncio.timeout(5):
        await thrice.wait()
    assert calls["once"] == 1 and ending.down() == ["once"] and ending.restarts["once"] == 0
    assert looping.restarts["forever"] >= 2
    assert await ending.close() and await looping.close()


async def test_stop_cancels_the_last_loops_after_the_others() -> None:
    order: list[str] = []

    def named(name: str) -> LoopFactory:
        async def run() -> None:
            try:
                await asyncio.sleep(100)
            finally:
                order.append(name)

        return run

    loops = Supervisor()
    for name in ("link", "a", "b"):
        loops.start(name, named(name))
    await asyncio.sleep(0)
    assert await loops.stop(last=("link",))
    assert order[-1] == "link" and set(order) == {"link", "a", "b"}


async def test_the_backoff_starts_over_for_a_loop_that_ran_well_for_a_while() -> None:
    """Crashes in a row back off (capped); a loop that ran `healthy_after` before it died is
    restarted after the first delay again."""
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    done = asyncio.Event()

    async def crashes() -> None:
        starts.append(loop.time())
        if len(starts) == 3:
            await asyncio.sleep(0.6)  # ran well this time, then died
        if len(starts) == 5:
            done.set()
            await asyncio.sleep(100)
        raise RuntimeError("boom")

    loops = Supervisor("t", first_delay=0.1, max_delay=2.0, healthy_after=0.5)
    loops.start("crashes", crashes)
    async with asyncio.timeout(5):
        await done.wait()
    delays = [b - a for a, b in itertools.pairwise(starts)]
    delays[2] -= 0.6  # the time it ran
    # backing off 0.1, 0.2; then the first delay again (0.1, not 0.4) and 0.2 (not 0.8)
    assert delays[0] >= 0.1 and delays[1] >= 0.2
    assert 0.1 <= delays[2] < 0.3 and 0.2 <= delays[3] < 0.6
    assert await loops.close()
