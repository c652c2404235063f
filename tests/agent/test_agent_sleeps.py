"""An agent sleeps until its work is due: an idle agent makes no store calls and arms no
timer (the uplink polled at 4 Hz with 4-5 COUNT/MIN queries each time, 85 % of an idle fleet's
CPU); a signal wakes it, a batch leaves when its age is due, and resends after an ack timeout
back off (capped, exponential, jittered) while the timeout follows measured ack latency."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

from agent.runtime.loops import MEMORY_SAMPLE_FAR_S, MEMORY_SAMPLE_S, MemoryWatch
from agent.runtime.memory import MB, MemoryBudget
from agent.store.core import Store
from protocol import codec
from tests.support.clock import FakeClock
from tests.support.local_device import Device, running_device
from tests.support.waiting import eventually

ALL = {"analytics": True, "personalization": True, "marketing": True}


def batches(device: Device) -> list[dict[str, Any]]:
    return [
        codec.decode_object(payload, allow_zlib=True)
        for topic, payload, _ in device.transports.last.published
        if topic.endswith("/batch")
    ]


def counting(store: Store) -> list[str]:
    """Every store call from now on, by function name."""
    calls: list[str] = []
    inner = store.call

    async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await inner(fn, *args, **kwargs)

    store.call = call  # type: ignore[method-assign]
    return calls


async def test_an_idle_connected_agent_makes_no_store_calls_and_does_not_wake(
    tmp_path: Path,
) -> None:
    async with running_device(tmp_path, overrides={"uplink": {"batch_max_age_s": 0.2}}) as device:
        agent = device.agent
        await agent.set_consent(ALL)
        device.transports.last.up()
        await asyncio.sleep(0.3)  # the connect's own look is over
        uplink = agent.uplink
        calls = counting(agent.parts.uplink._store)
        wakes = uplink.wakes
        await asyncio.sleep(1.5)
        assert calls == []  # 4 Hz x 4-5 queries before
        assert uplink.wakes == wakes
        assert uplink.next_wake() == agent.settings.profile.uplink.idle_wake_s


async def test_an_idle_agent_sets_no_timer_at_all(tmp_path: Path) -> None:
    """Every loop of an idle agent (uplink, claims, maintenance, memory, state) waits on an
    event or a far deadline: in two seconds none arms a timer on the event loop (before:
    the uplink's 4 Hz tick and the claims loop's 1 Hz look, ten or more)."""
    async with running_device(tmp_path) as device:
        agent = device.agent
        await agent.set_consent(ALL)
        device.transports.last.up()
        await asyncio.sleep(1.2)  # the connect's own looks are over
        loop = asyncio.get_running_loop()
        armed: list[float] = []
        call_at = loop.call_at

        def counting(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            armed.append(when - loop.time())
            return call_at(when, *args, **kwargs)

        loop.call_at = counting  # type: ignore[method-assign,assignment]
        try:
            await asyncio.sleep(2.0)
        finally:
            del loop.call_at
        assert [round(d, 2) for d in armed if d < 30] == [2.0]  # only this test's own sleep


def test_the_memory_watch_samples_often_only_near_the_budget() -> None:
    budget = MemoryBudget(100)
    watch = MemoryWatch(settings=None, budget=budget, metrics=None, store=None, slot=None)  # type: ignore[arg-type]
    budget.observe(30 * MB, 0.0)
    assert watch.next_sample_s() == MEMORY_SAMPLE_FAR_S
    budget.observe(80 * MB, 0.0)
    assert watch.next_sample_s() == MEMORY_SAMPLE_S


async def test_a_signal_wakes_the_uplink_and_its_batch_leaves_when_its_age_is_due(
    tmp_path: Path,
) -> None:
    age = 0.6
    async with running_device(tmp_path, overrides={"uplink": {"batch_max_age_s": age}}) as device:
        agent = device.agent
        await agent.set_consent(ALL)
        device.transports.last.up()
        await asyncio.sleep(0.2)
        wakes = agent.uplink.wakes
        started = time.monotonic()
        await agent.accept_signals([{"kind": "search", "attrs": {"query_len": 3}}])
        await eventually(lambda: batches(device), timeout=5, step=0.01)
        took = time.monotonic() - started
        assert age * 0.8 <= took <= age + 0.5  # at its age, not a tick later or earlier
        assert agent.uplink.wakes - wakes <= 3  # the poke, the due time (and a spare)


async def test_resends_back_off_and_the_ack_timeout_follows_ack_latency(tmp_path: Path) -> None:
    timer = FakeClock(1000.0)
    overrides = {
        "uplink": {
            "batch_max_age_s": 0.0,
            "ack_timeout_s": 10.0,
            "ack_timeout_min_s": 1.0,
            "resend_max_s": 100.0,
            "max_in_flight": 1,
        }
    }
    async with running_device(tmp_path, overrides=overrides, timer=timer) as device:
        agent = device.agent
        uplink = agent.uplink
        transport = device.transports.last
        await agent.set_consent(ALL)
        transport.up()
        await agent.accept_signals([{"kind": "search"}])
        await eventually(lambda: len(batches(device)) == 1, timeout=5)
        # unacked: resent after 10 s (+ jitter), then 20, 40, 80, then every 100 at most
        sent_at = [timer.now]
        for _ in range(7):
            last = len(batches(device))
            due = uplink.next_wake()
            timer.advance(due - 0.01)
            await uplink.step()
            assert len(batches(device)) == last  # not before its time
            timer.advance(0.02)
            await uplink.step()
            assert len(batches(device)) == last + 1
            sent_at.append(timer.now)
        waits = [b - a for a, b in itertools.pairwise(sent_at)]
        for n, wait in enumerate(waits):
            base = min(100.0, 10.0 * 2**n)
            assert base - 0.1 <= wait <= min(100.0, base * 1.5) + 0.1, (n, waits)
        assert waits[-1] <= 100.1 and waits[-2] <= 100.1  # capped
        seq = batches(device)[-1]["seq"]
        assert {b["seq"] for b in batches(device)} == {seq}  # the same batch each time
        await transport.deliver("ack", device.ack([seq]))
        assert uplink.acks.srtt is None  # the ack of a resent batch is not a sample (Karn)

        # fast acks: the timeout falls from the configured 10 s towards the measured latency
        for i in range(12):
            await agent.accept_signals([{"kind": "search", "attrs": {"query_len": i}}])
            await uplink.step()
            batch = batches(device)[-1]
            timer.advance(0.2)
            await transport.deliver("ack", device.ack([batch["seq"]]))
        assert uplink.acks.srtt is not None and abs(uplink.acks.srtt - 0.2) < 0.01
        assert uplink.acks.timeout == 1.0  # smoothed + 4 x variance, at its floor
        assert agent.store.depth == 0


async def test_an_ack_restarts_the_backoff_of_the_batches_still_in_flight(tmp_path: Path) -> None:
    """The gateway is back at work (an ack came): a batch that backed off to minutes is
    resent after one ack timeout again, not after its backed-off wait (RFC 6298, 5.3)."""
    timer = FakeClock(1000.0)
    overrides = {
        "uplink": {
            "batch_max_age_s": 0.0,
            "batch_max_signals": 1,
            "ack_timeout_s": 10.0,
            "max_in_flight": 2,
        }
    }
    async with running_device(tmp_path, overrides=overrides, timer=timer) as device:
        agent, uplink, transport = device.agent, device.agent.uplink, device.transports.last
        await agent.set_consent(ALL)
        transport.up()
        await agent.accept_signals([{"kind": "search"}, {"kind": "search"}])
        await eventually(lambda: len({b["seq"] for b in batches(device)}) == 2, timeout=5)
        for _ in range(20):  # no ack: both back off past a minute
            timer.advance(uplink.next_wake() + 0.01)
            await uplink.step()
            if uplink.next_wake() > 60.0:
                break
        assert uplink.next_wake() > 60.0
        first = min(b["seq"] for b in batches(device))
        await transport.deliver("ack", device.ack([first]))
        assert uplink.in_flight == 1
        assert uplink.next_wake() <= 15.0  # one (jittered) ack timeout, not minutes
