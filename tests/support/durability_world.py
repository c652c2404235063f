"""Helpers of the durability tests: an in-process gateway and agent on a real Mosquitto,
each test in its own topic root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.config import AgentSettings, load_settings
from cloud_gateway.db.devices import export_device, get_device
from cloud_gateway.runtime.gateway import Gateway
from simulators.brokers import MosquittoProcess
from tests.support.helpers import gateway_settings

ALL = {"analytics": True, "personalization": True, "marketing": True}


@asynccontextmanager
async def gateway(tmp_path: Path, broker: MosquittoProcess) -> AsyncIterator[Gateway]:
    async with Gateway(gateway_settings(tmp_path, broker)) as gw:
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
    return await gw.db.call(export_device, device) or {}


async def device_view(gw: Gateway, device: str) -> dict[str, Any]:
    return await gw.db.call(get_device, device) or {}
