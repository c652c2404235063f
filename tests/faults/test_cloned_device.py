"""The same device id connected twice: a cloned image (the data directory copied, store and
all) started beside the original, two real agent processes on a private Mosquitto, with a
real gateway. MQTT's rule holds (the newer session takes over; the other reconnects and takes
it back), and the agents make it safe: the copy takes a new outbox id for its new batches, so
the gateway stores both copies' batches and an ack deletes only the batches of the outbox it
names. Every signal either agent answered 202 is stored at the gateway, and both outboxes
drain; on `main` the copy's batches reused the original's (outbox id, seq), the gateway took
them for duplicates and acked them, and the copy deleted signals never stored."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.devices import export_device
from cloud_gateway.runtime.gateway import Gateway
from simulators.brokers import MosquittoProcess, free_port
from simulators.faults import AgentProcess
from tests.support.waiting import eventually

DEVICE = "tv-clone-0001"
ENV = {
    "EDGEMART_CONSENT__ANALYTICS": "true",
    "EDGEMART_UPLINK__BATCH_MAX_AGE_S": "0.1",
    "EDGEMART_UPLINK__ACK_TIMEOUT_S": "2",
}


async def _auth(agent: AgentProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {await asyncio.to_thread(agent.token)}"}


async def post(agent: AgentProcess, tag: str, n: int) -> list[str]:
    body = {
        "signals": [{"kind": "search", "attrs": {"query_len": i, "from": tag}} for i in range(n)]
    }
    async with (
        aiohttp.ClientSession(headers=await _auth(agent)) as http,
        http.post(f"{agent.api}/v1/signals", json=body) as resp,
    ):
        assert resp.status == 202, await resp.text()
        ids: list[str] = (await resp.json())["ids"]
        return ids


async def status(agent: AgentProcess) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers=await _auth(agent)) as http,
        http.get(f"{agent.api}/v1/status") as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return body


async def test_a_cloned_device_loses_nothing_and_gets_no_acks_of_the_other(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    settings = GatewaySettings(
        broker=own_mosquitto.url, data_dir=tmp_path / "gw", http_port=0, ack_delay_ms=2
    )
    async with Gateway(settings) as gw:

        def agent(name: str) -> AgentProcess:
            return AgentProcess(
                profile="tv",
                device_id=DEVICE,
                broker=own_mosquitto.url,
                data_dir=tmp_path / name,
                api_port=free_port(),
                trust=gw.trust_path,
                log=tmp_path / f"{name}.log",
                env=ENV,
            )

        original = agent("original")
        await asyncio.to_thread(original.start)
        accepted = await post(original, "first", 20)
        await eventually(lambda: _depth(original, 0), timeout=20, what="first drain")
        assert original.stop() == 0
        shutil.copytree(tmp_path / "original", tmp_path / "clone")  # the cloned image
        clone = agent("clone")
        try:
            await asyncio.to_thread(original.start)
            await asyncio.to_thread(clone.start)
            for round_ in range(5):
                accepted += await post(original, f"o{round_}", 30)
                accepted += await post(clone, f"c{round_}", 30)
                await asyncio.sleep(0.3)

            async def all_stored() -> bool:
                export = await gw.db.call(export_device, DEVICE)
                stored = {s["id"] for s in (export or {}).get("signals", [])}
                return set(accepted) <= stored

            await eventually(all_stored, timeout=60, what="every accepted signal stored")
            await eventually(lambda: _depth(original, 0), timeout=30, what="original")
            await eventually(lambda: _depth(clone, 0), timeout=30, what="clone drains")
            mine, copy = await status(original), await status(clone)
            assert mine["outbox_id"] != copy["outbox_id"]
            assert copy["store"]["outbox_rotations"] == 1
            assert mine["store"]["outbox_rotations"] == 0
            # both held the session in turn: the newer session took it over at least once
            connects = [m["counters"].get("link_connects", 0) for m in (mine, copy)]
            assert min(connects) >= 1 and sum(connects) >= 3, connects
            assert len(set(accepted)) == len(accepted) == 20 + 5 * 60
        finally:
            clone.stop()
            original.stop()


async def _depth(agent: AgentProcess, wanted: int) -> bool:
    try:
        return bool((await status(agent))["outbox_depth"] == wanted)
    except aiohttp.ClientError:
        return False
