"""Consent withdrawn mid-flush (real Mosquitto, in-process gateway and agent, local HTTP):
what was pending is purged and counted, nothing accepted after the withdrawal leaves the
device (also across a restart), and loss accounting still closes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.runtime.agent import Agent
from simulators.brokers import MosquittoProcess
from simulators.checker import Drops, account
from tests.support.agent_world import http
from tests.support.builders import ALL
from tests.support.gateway_world import agent_settings, device_view, export, gateway
from tests.support.waiting import eventually

NO_ANALYTICS = {**ALL, "analytics": False}


def views(n: int, tag: int) -> list[dict[str, Any]]:
    return [{"kind": "content_view", "attrs": {"category": "tv_streaming", "seconds": tag}}] * n


async def put_consent(agent: Agent, purposes: dict[str, bool]) -> dict[str, Any]:
    status, body = await http(agent, "PUT", "/v1/consent", json={"purposes": purposes})
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def test_consent_withdrawn_mid_flush_purges_pending_and_holds_later_signals(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    async with gateway(tmp_path, mosquitto) as gw:
        settings = agent_settings(
            gw,
            tmp_path,
            mosquitto,
            device="tv-consent-01",
            uplink={"batch_max_signals": 50, "drain_batches_per_s": 4.0, "max_in_flight": 2},
        )
        device = settings.device_id
        before: list[str] = []
        after: list[str] = []
        async with Agent(settings) as agent:
            assert await agent.wait_connected(20)
            await put_consent(agent, ALL)
            for i in range(20):
                before += await agent.accept_signals(views(100, i))
            # Mid-flush: some batches are stored, most of the 2,000 signals still wait.
            await eventually(lambda: agent.counters["signals_acked"] >= 100, what="first acks")
            body = await put_consent(agent, NO_ANALYTICS)
            assert body["purposes"]["analytics"] is False
            # A purged batch already in flight is counted withdrawn until its ack says it was
            # stored after all (`outbox_sql.ack_withdrawn`): read the count once none is.
            await eventually(lambda: agent.uplink is not None and agent.uplink.in_flight == 0)
            purged = agent.status()["accounting"]["withdrawn"]
            assert purged > 0
            for i in range(5):
                after += await agent.accept_signals(views(40, 100 + i))
            assert agent.status()["accounting"]["withdrawn"] == purged + len(after)
            await eventually(lambda: agent.uplink is not None and agent.uplink.in_flight == 0)
        # Restarted while withdrawn: still nothing new goes into the outbox.
        async with Agent(settings) as agent:
            assert await agent.wait_connected(20)
            after += await agent.accept_signals(views(30, 200))
            assert agent.store.depth == 0
            await put_consent(agent, ALL)  # granted again: only what comes now leaves
            later = await agent.accept_signals(views(20, 300))
            assert await agent.drain(timeout=30)
            drops = Drops.from_status(agent.status())

            stored = {s["id"] for s in (await export(gw, device))["signals"]}
            assert not stored & set(after), "a signal accepted after the withdrawal left"
            assert set(later) <= stored
            report = account({device: before + after + later}, {device: stored}, {device: drops})
            assert report.ok, report.line()
            assert report.withdrawn == purged + len(after)
            assert 0 < report.stored - len(later) < len(before)

            async def gateway_knows() -> bool:
                stats = (await device_view(gw, device)).get("stats", {})
                return bool(stats.get("withdrawn") == report.withdrawn)

            await eventually(gateway_knows, what="the device's stats at the gateway")
