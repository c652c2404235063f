"""The QA demo on a broker a real gateway and a real TV use: it runs under a topic root of
its own, so the real ones see nothing of it, and it leaves nothing retained behind, also
when it is stopped with SIGTERM or Ctrl-C half-way."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from simulators.brokers import MosquittoProcess, free_port
from simulators.demo import DemoOptions, run_demo, succeeded
from simulators.retained import retained_topics
from tests.support.processes import EDGEMART, spawn, start_gateway, stop, tail, wait_healthy
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def _get(url: str, token: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _retained(broker: MosquittoProcess, topic: str) -> bytes | None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(2):
                async for message in client.messages:
                    payload = message.payload
                    return bytes(payload) if isinstance(payload, bytes | bytearray) else None
        except TimeoutError:
            return None
    return None


async def test_the_demo_leaves_a_real_gateway_and_device_untouched(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    gw_dir, gw_port, api_port = tmp_path / "gw", free_port(), free_port()
    gateway = await start_gateway(own_mosquitto.url, gw_dir, gw_port, tmp_path / "gw.log")
    agent_log = tmp_path / "agent.log"
    agent = spawn(
        [
            *("agent", "run", "--profile", "tv", "--device-id", "tv-real-01"),
            *("--broker", own_mosquitto.url, "--data-dir", str(tmp_path / "tv")),
            *("--trust", str(gw_dir / "trust.json"), "--api-port", str(api_port)),
        ],
        agent_log,
    )
    try:
        await wait_healthy(
            f"http://127.0.0.1:{api_port}/healthz",
            agent,
            agent_log,
            ready=lambda body: body.get("link") == "connected",
        )
        keys_before = await _retained(own_mosquitto, "edgemart/v1/keys")
        assert keys_before
        report = await run_demo(
            DemoOptions(
                broker=own_mosquitto.url,
                data_dir=tmp_path / "demo",
                signals_per_device=100,
                browse_rounds=10,
                live_signals_per_device=30,
            )
        )
        assert succeeded(report), report
        root = report["topic_root"]
        assert root.startswith("edgemart-qa/demo-")
        # nothing of the demo is left retained at the broker
        assert await retained_topics(own_mosquitto.url, root) == []
        # the real key list is the real gateway's, untouched
        assert await _retained(own_mosquitto, "edgemart/v1/keys") == keys_before
        assert await _retained(own_mosquitto, "edgemart/v1/cohort/all/offers") is None
        # the real gateway registered no demo device; the real TV saw no bundle of the demo
        token = (
            subprocess.run(
                [*EDGEMART, "gateway", "token", "create", "--data-dir", str(gw_dir)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        devices = await _get(f"http://127.0.0.1:{gw_port}/v1/devices", token)
        ids = {d["device_id"] for d in devices.get("devices", devices)}
        assert ids == {"tv-real-01"}, ids
        token_file = tmp_path / "tv" / "tokens" / "admin.token"  # once the API asks for one
        tv_token = token_file.read_text().strip() if token_file.exists() else ""
        status = await _get(f"http://127.0.0.1:{api_port}/v1/status", tv_token)
        counters = status["counters"]
        assert counters.get("offers_verified", 0) == 0, counters
        assert counters.get("offers_rejected", 0) == 0, counters
        assert counters.get("bundles_rejected", 0) == 0, counters
    finally:
        stop(agent)
        stop(gateway)
    assert "Traceback" not in tail(agent_log, 100_000)


@pytest.mark.parametrize(("stop_with", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_a_demo_stopped_half_way_clears_what_it_left(
    tmp_path: Path, own_mosquitto: MosquittoProcess, stop_with: signal.Signals, code: int
) -> None:
    log = tmp_path / "demo.log"
    demo = spawn(["demo", "--broker", own_mosquitto.url], log)
    seen: set[str] = set()
    try:
        async with aiomqtt.Client("127.0.0.1", own_mosquitto.port) as spy:
            await spy.subscribe("#", qos=1)

            async def catalog_retained() -> bool:
                async with asyncio.timeout(0.5):
                    async for message in spy.messages:
                        seen.add(str(message.topic))
                        if str(message.topic).endswith("/cohort/all/offers"):
                            return True
                return False

            async def waiting() -> bool:
                assert demo.poll() is None, tail(log)
                try:
                    return await catalog_retained()
                except TimeoutError:
                    return False

            await eventually(waiting, 60.0, "the demo's catalog", step=0.0)
        demo.send_signal(stop_with)
        exited = await asyncio.to_thread(demo.wait, 60)
    finally:
        stop(demo)
    assert exited == code, tail(log)
    assert all(t.startswith("edgemart-qa/demo-") for t in seen), sorted(seen)[:5]
    root = "/".join(next(iter(seen)).split("/")[:3])
    assert await retained_topics(own_mosquitto.url, root) == [], tail(log)
    assert "Traceback" not in tail(log, 100_000)
