"""The uplink under budgets and after outages (real Mosquitto, in-process gateway and agent):
aggregate mode's cumulative snapshots, the daily byte budget (degrade, then hold), the paced
drain after an outage (high priority first, then oldest). The reconnect backoff's properties
are tested in `tests/mqttlink/test_backoff.py`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent.errors import LinkDown
from agent.runtime.agent import Agent
from cloud_gateway.db.store import Store as GatewayStore
from simulators.brokers import MosquittoProcess
from simulators.checker import Drops, account, coverage
from tests.support.builders import ALL
from tests.support.clock import FakeClock
from tests.support.gateway_world import agent_settings, device_view, export, gateway
from tests.support.waiting import eventually


def mixed(round_: int) -> list[dict[str, Any]]:
    return (
        [{"kind": "content_view", "attrs": {"category": "tv_streaming", "seconds": 30}}] * 20
        + [{"kind": "app_open", "attrs": {"app": "store", "category": "games"}}] * 10
        + [{"kind": "search", "attrs": {"query_len": round_}}] * 5
    )


async def test_aggregate_mode_snapshots_cover_every_signal_and_the_latest_wins(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    async with gateway(tmp_path, mosquitto) as gw:
        settings = agent_settings(
            gw, tmp_path, mosquitto, device="tv-agg-0001", uplink={"mode": "aggregate"}
        )
        device = settings.device_id
        async with Agent(settings) as agent:
            assert await agent.wait_connected(20)
            await agent.set_consent(ALL)
            ids: list[str] = []
            for r in range(6):
                ids += await agent.accept_signals(mixed(r))
                await eventually(lambda: agent.store.depth == 0, what="snapshot acked")
            exp = await export(gw, device)
            assert exp["signals"] == []
            per_key: dict[str, int] = {}
            seconds = 0.0
            for a in exp["aggregates"]:
                per_key[a["key"]] = per_key.get(a["key"], 0) + a["count"]
                seconds += a["seconds"]
            assert per_key == {
                "content_view/category=tv_streaming": 120,
                "app_open/category=games": 60,
                "search": 30,
            }
            assert seconds == 120 * 30.0
            # Six cumulative snapshots per key went up; the gateway keeps the latest only.
            assert gw.counters["aggregates_stored"] >= 6 * 3
            assert len({(a["window"], a["key"]) for a in exp["aggregates"]}) == len(
                exp["aggregates"]
            )
            report = account(
                {device: ids},
                {device: []},
                {device: Drops.from_status(agent.status())},
                {device: coverage(exp)},
            )
            assert report.ok and report.aggregated == len(ids) == 210, report.line()
            assert (await device_view(gw, device))["aggregates_cover"] == 210


async def batches_at(gw: Any, device: str) -> int:
    def count(store: GatewayStore, dev: str) -> int:
        row = store.conn.execute("SELECT count(*) FROM batches WHERE device_id = ?", [dev])
        return int(row.fetchone()[0])

    result: int = await gw.db.call(count, device)
    return result


async def test_daily_byte_budget_degrades_to_aggregates_then_holds_until_the_next_day(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    budget = 12_000
    async with gateway(tmp_path, mosquitto) as gw:
        settings = agent_settings(
            gw,
            tmp_path,
            mosquitto,
            device="tv-budget-001",
            budgets={"uplink_bytes_per_day": budget},
            uplink={"degrade_at": 0.5, "batch_max_signals": 100},
        )
        device = settings.device_id
        clock = FakeClock()
        async with Agent(settings, clock=clock) as agent:
            uplink = agent.uplink
            assert uplink is not None
            assert await agent.wait_connected(20)
            await agent.set_consent(ALL)
            ids: list[str] = []
            rounds = 0
            while uplink.mode() == "raw":
                ids += await agent.accept_signals(mixed(rounds))
                rounds += 1
                await eventually(lambda: agent.store.depth == 0, what="raw batch acked")
                assert rounds < 100, "never degraded"
            assert uplink.used_today() >= budget // 2
            raw_ids = list(ids)
            while not uplink.holding:
                ids += await agent.accept_signals(mixed(rounds))
                rounds += 1
                await eventually(
                    lambda: agent.store.depth == 0 or uplink.holding,
                    what="aggregate acked or holding",
                )
                assert rounds < 500, "never held"
            held_at = await batches_at(gw, device)
            ids += await agent.accept_signals(mixed(rounds))
            await asyncio.sleep(1.0)
            assert await batches_at(gw, device) == held_at  # nothing goes up while held
            assert agent.status()["accounting"]["holding"] is True
            assert uplink.used_today() < budget + 4000  # at most one batch over
            assert agent.store.depth > 0  # kept, not dropped

            clock.offset = 86_400.0  # the next day: a fresh budget
            assert await agent.drain(timeout=20)
            assert uplink.mode() == "raw"
            exp = await export(gw, device)
            stored = [s["id"] for s in exp["signals"]]
            assert set(raw_ids) <= set(stored)
            report = account(
                {device: ids},
                {device: stored},
                {device: Drops.from_status(agent.status())},
                {device: coverage(exp)},
            )
            assert report.ok, report.line()
            assert report.aggregated > 0


async def test_drain_after_an_outage_is_paced_high_priority_first_then_oldest(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    rate = 5.0
    async with gateway(tmp_path, own_mosquitto) as gw:
        settings = agent_settings(
            gw,
            tmp_path,
            own_mosquitto,
            device="tv-drain-0001",
            uplink={"batch_max_signals": 50, "drain_batches_per_s": rate, "max_in_flight": 4},
        )
        device = settings.device_id
        async with Agent(settings) as agent:
            assert await agent.wait_connected(20)
            await agent.set_consent(ALL)
            link = agent.link
            assert link is not None
            own_mosquitto.kill()
            await eventually(lambda: not link.connected.is_set(), what="offline")
            # priority 20, 50, 90
            kinds: dict[str, list[str]] = {"app_open": [], "content_view": [], "purchase": []}
            for r in range(10):
                for kind, n in (("app_open", 60), ("content_view", 30), ("purchase", 10)):
                    kinds[kind] += await agent.accept_signals(
                        [{"kind": kind, "attrs": {"category": "games", "n": r}}] * n
                    )
            await asyncio.to_thread(own_mosquitto.start)
            started = time.monotonic()
            assert await agent.drain(timeout=60)
            took = time.monotonic() - started
            exp = await export(gw, device)
        seq_of = {s["id"]: s["seq"] for s in exp["signals"]}
        assert len(seq_of) == 1000
        last = {k: max(seq_of[i] for i in v) for k, v in kinds.items()}
        first = {k: min(seq_of[i] for i in v) for k, v in kinds.items()}
        assert last["purchase"] <= first["content_view"]
        assert last["content_view"] <= first["app_open"]
        # Oldest first within a priority: the first app_opens went up first.
        app = kinds["app_open"]
        assert seq_of[app[0]] <= seq_of[app[-1]]
        # Paced: 20 batches at 5 a second (a burst of max_in_flight) take at least ~3 s.
        assert took >= (20 - 4) / rate * 0.8


async def test_an_uplink_publish_fails_at_once_when_the_broker_dies_before_its_puback(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    """A batch in flight when the broker dies: the link fails the publish (the batch stays
    unsent, to go again) as soon as paho sees the loss, not after aiomqtt's 10 s timeout."""
    async with gateway(tmp_path, own_mosquitto) as gw:
        settings = agent_settings(gw, tmp_path, own_mosquitto, device="tv-dur-0002")
        async with Agent(settings) as agent:
            assert await agent.wait_connected(20)
            link = agent.link
            assert link is not None
            own_mosquitto.pause()
            sending = asyncio.create_task(link.publish("edgemart-test/probe", b"{}"))
            await asyncio.sleep(0.3)
            assert not sending.done()
            own_mosquitto.kill()
            started = time.monotonic()
            with pytest.raises(LinkDown, match="session ended"):
                await asyncio.wait_for(sending, 5)
            assert time.monotonic() - started < 3
            await eventually(lambda: not link.connected.is_set(), 3, "the link reports the loss")
