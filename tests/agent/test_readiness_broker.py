"""Readiness against a real broker: `/readyz` fails while the broker is dead, then recovers;
`/healthz` (liveness) answers throughout."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from agent.config import load_settings
from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.signing import Signer
from simulators.brokers import MosquittoProcess
from tests.support.waiting import eventually


async def test_readyz_fails_while_the_broker_is_dead_then_recovers(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    signer = Signer.generate("k1")
    trust = tmp_path / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[signer.public], topic_root="tready/v1")))
    settings = load_settings(
        profile="tv",
        device_id="tv-ready",
        broker=own_mosquitto.url,
        data_dir=tmp_path / "data",
        api_port=0,
        trust=trust,
        overrides={"topic_root": "tready/v1"},
        environ={},
    )
    async with Agent(settings) as agent, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{agent.api_port}"
        codes: dict[str, int] = {}

        async def probe() -> None:
            for path in ("/readyz", "/healthz"):
                async with http.get(base + path) as response:
                    codes[path] = response.status

        assert await agent.wait_connected(10)
        await probe()
        assert codes == {"/readyz": 200, "/healthz": 200}
        await asyncio.to_thread(own_mosquitto.kill)

        async def not_ready() -> bool:
            await probe()
            return codes["/readyz"] == 503

        await eventually(not_ready, timeout=10)
        assert codes == {"/readyz": 503, "/healthz": 200}
        await asyncio.to_thread(own_mosquitto.start)
        assert await agent.wait_connected(30)
        await probe()
        assert codes == {"/readyz": 200, "/healthz": 200}
        assert agent.counters["loop_restarts"] == 0  # the link reconnects; it did not die
