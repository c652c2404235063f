"""Faults with real processes and a real Mosquitto: the agent SIGKILLed 20+ times while a
client posts 10,000 signals; Mosquitto SIGKILLed and the gateway restarted mid-stream.
Every signal that got a 202 must be stored at the gateway exactly once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import load_settings
from agent.runtime.agent import Agent
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.devices import export_device
from cloud_gateway.runtime.gateway import Gateway
from simulators.brokers import MosquittoProcess, free_port
from simulators.checker import check
from simulators.faults import AgentProcess
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIGNAL_ENV = {
    "EDGEMART_CONSENT__ANALYTICS": "true",
    "EDGEMART_UPLINK__BATCH_MAX_AGE_S": "0.1",
    "EDGEMART_UPLINK__BATCH_MAX_SIGNALS": "200",
    "EDGEMART_UPLINK__ACK_TIMEOUT_S": "3",
    "EDGEMART_UPLINK__DRAIN_BATCHES_PER_S": "50",
}


def body(n: int, tag: int) -> dict[str, Any]:
    return {
        "signals": [
            {"kind": "content_view", "attrs": {"category": "tv_streaming", "seconds": tag + i}}
            for i in range(n)
        ]
    }


async def stored_ids(gw: Gateway, device: str) -> list[str]:
    export = await gw.db.call(export_device, device)
    return [s["id"] for s in (export or {}).get("signals", [])]


async def test_sigkill_the_agent_20_times_while_posting_10000_signals(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    target, per_request, kills_wanted = 10_000, 25, 21
    device = "tv-sigkill-0001"
    settings = GatewaySettings(
        broker=own_mosquitto.url, data_dir=tmp_path / "gw", http_port=0, ack_delay_ms=2
    )
    async with Gateway(settings) as gw:
        agent = AgentProcess(
            profile="tv",
            device_id=device,
            broker=own_mosquitto.url,
            data_dir=tmp_path / "dev",
            api_port=free_port(),
            trust=gw.trust_path,
            log=tmp_path / "agent.log",
            env=SIGNAL_ENV,
        )
        await asyncio.to_thread(agent.start)
        accepted: list[str] = []
        rng = random.Random(20261127)
        done_posting = asyncio.Event()

        async def killer() -> None:
            while agent.kills < kills_wanted:
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                agent.kill()
                if agent.kills % 4 == 0:  # sometimes again while it starts and recovers
                    agent.spawn()
                    await asyncio.sleep(rng.uniform(0.0, 1.5))
                    agent.kill()
                await asyncio.to_thread(agent.start)

        async def poster() -> None:
            tag = 0
            auth = {"Authorization": f"Bearer {await asyncio.to_thread(agent.token)}"}
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout, headers=auth) as http:
                while len(accepted) < target:
                    tag += 1
                    try:
                        async with http.post(
                            f"{agent.api}/v1/signals", json=body(per_request, tag)
                        ) as resp:
                            if resp.status == 202:
                                accepted.extend((await resp.json())["ids"])
                            else:
                                assert resp.status >= 500, await resp.text()
                    except (aiohttp.ClientError, TimeoutError):
                        await asyncio.sleep(0.05)  # the agent is down: try again
                    # Spread the posts over the kills: ~25 signals every 40 ms of uptime.
                    await asyncio.sleep(0.04)
            done_posting.set()

        kill_task = asyncio.create_task(killer(), name="killer")
        await poster()
        await kill_task
        assert agent.kills >= 20
        assert len(accepted) >= target

        async def all_stored() -> bool:
            return set(accepted) <= set(await stored_ids(gw, device))

        await eventually(all_stored, 180.0, "every 202'd signal stored", step=0.3)
        ids = await stored_ids(gw, device)
        report = check({device: accepted}, {device: ids})
        assert report.lost == 0, report.lost_ids
        assert report.duplicated == 0
        assert len(ids) == len(set(ids))
        # Every batch was stored once: the gateway counted the rest as duplicates.
        assert gw.counters["signals_stored"] == len(ids)
        assert agent.stop() == 0, agent.log.read_text()[-2000:]


async def test_mosquitto_sigkilled_and_gateway_restarted_mid_stream(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    device = "tv-brokerkill-01"
    gw_settings = GatewaySettings(
        broker=own_mosquitto.url, data_dir=tmp_path / "gw", http_port=0, ack_delay_ms=2
    )
    gw = Gateway(gw_settings)
    await gw.__aenter__()
    settings = load_settings(
        profile="tv",
        device_id=device,
        broker=own_mosquitto.url,
        data_dir=tmp_path / "dev",
        api_port=None,
        trust=gw.trust_path,
        overrides={
            "consent": {"analytics": True},
            "uplink": {
                "batch_max_age_s": 0.05,
                "batch_max_signals": 100,
                "ack_timeout_s": 2.0,
                "drain_batches_per_s": 20.0,
            },
        },
        environ={},
    )
    accepted: list[str] = []
    try:
        async with Agent(settings) as agent:
            assert await agent.wait_connected(30)
            for round_ in range(60):
                accepted += await agent.accept_signals(
                    [{"kind": "search", "attrs": {"query_len": round_}}] * 50
                )
                if round_ == 15:
                    own_mosquitto.kill()  # a broker crash: its in-memory state is gone
                if round_ == 25:
                    await asyncio.to_thread(own_mosquitto.start)
                    assert await agent.wait_connected(30)
                    await asyncio.sleep(0.3)  # some batches go up on the new connection
                if round_ == 35:
                    own_mosquitto.stop()  # and a clean stop, with the gateway restarted
                    await gw.__aexit__(None, None, None)
                    await asyncio.to_thread(own_mosquitto.start)
                    gw = Gateway(gw_settings)
                    await gw.__aenter__()
                await asyncio.sleep(0.05)
            assert await agent.drain(timeout=120), agent.status()

            ids = await stored_ids(gw, device)
            report = check({device: accepted}, {device: ids})
            assert report.ok, report
            assert report.unexpected == 0
            assert len(ids) == len(accepted) == 3000
            assert agent.counters["link_connects"] >= 3
    finally:
        await gw.__aexit__(None, None, None)
