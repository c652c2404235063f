"""Helpers of the durability tests: an in-process gateway and agent on a real Mosquitto,
each test in its own topic root."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.config import AgentSettings, load_settings
from cloud_gateway.config import GatewaySettings
from cloud_gateway.service import Gateway
from cloud_gateway.store import Store as GatewayStore
from edgemart.broker import MosquittoProcess

ALL = {"analytics": True, "personalization": True, "marketing": True}


@asynccontextmanager
async def gateway(tmp_path: Path, broker: MosquittoProcess) -> AsyncIterator[Gateway]:
    tag = uuid.uuid4().hex[:10]
    settings = GatewaySettings(
        broker=broker.url,
        data_dir=tmp_path / "gw",
        http_port=0,
        topic_root=f"t{tag}/v1",
        client_id=f"gw-{tag}",
        ack_delay_ms=2,
    )
    async with Gateway(settings) as gw:
        yield gw


def agent_settings(
    gw: Gateway,
    tmp_path: Path,
    broker: MosquittoProcess,
    *,
    device: str = "tv-dur-0001",
    profile: str = "tv",
    **overrides: Any,
) -> AgentSettings:
    uplink = {"batch_max_age_s": 0.05, "ack_timeout_s": 5.0, **overrides.pop("uplink", {})}
    return load_settings(
        profile=profile,
        device_id=device,
        broker=broker.url,
        data_dir=tmp_path / device,
        api_port=0,
        trust=gw.trust_path,
        overrides={"uplink": uplink, **overrides},
        environ={},
    )


async def export(gw: Gateway, device: str) -> dict[str, Any]:
    return await gw.db.call(GatewayStore.export_device, device) or {}


async def device_view(gw: Gateway, device: str) -> dict[str, Any]:
    return await gw.db.call(GatewayStore.get_device, device) or {}


async def eventually(pred: Callable[[], Any], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = pred()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s: {what}")
        await asyncio.sleep(0.05)
