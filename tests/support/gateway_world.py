"""A gateway in this process on a shared broker, each test in its own topic root, and the
settings of agents that talk to it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.config import AgentSettings, load_settings
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.devices import export_device, get_device
from cloud_gateway.runtime.gateway import Gateway
from simulators.brokers import MosquittoProcess
from tests.support.builders import unpaced


def gateway_settings(tmp_path: Path, broker: MosquittoProcess, **overrides: Any) -> GatewaySettings:
    """Settings of a gateway in this process: data in tmp_path/gw, any free HTTP port, a topic
    root and client id of its own (other tests share the broker), acks sent after 2 ms."""
    tag = uuid.uuid4().hex[:10]
    fields: dict[str, Any] = {
        "broker": broker.url,
        "data_dir": tmp_path / "gw",
        "http_port": 0,
        "topic_root": f"t{tag}/v1",
        "client_id": f"gw-{tag}",
        "ack_delay_ms": 2,
    }
    return GatewaySettings(**{**fields, **overrides})


@asynccontextmanager
async def gateway(tmp_path: Path, broker: MosquittoProcess) -> AsyncIterator[Gateway]:
    """A started gateway with `gateway_settings`, stopped on leaving."""
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
    """Settings of an agent of `gw` (its trust file and topic root), batches sent after 50 ms."""
    uplink = {"batch_max_age_s": 0.05, "ack_timeout_s": 5.0, **overrides.pop("uplink", {})}
    return load_settings(
        profile=profile,
        device_id=device,
        broker=broker.url,
        data_dir=tmp_path / device,
        api_port=0,
        trust=gw.trust_path,
        overrides={
            "uplink": uplink,
            **overrides,
            "decisions": unpaced(overrides.get("decisions")),
        },
        environ={},
    )


async def export(gw: Gateway, device: str) -> dict[str, Any]:
    """What the gateway would export of `device` (empty when it knows none)."""
    return await gw.db.call(export_device, device) or {}


async def device_view(gw: Gateway, device: str) -> dict[str, Any]:
    """The gateway's row of `device` (empty when it knows none)."""
    return await gw.db.call(get_device, device) or {}
