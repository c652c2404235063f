"""A network partition at shutdown: the agent still stops, within its goodbye timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.runtime.agent import Agent
from simulators.brokers import MosquittoProcess
from simulators.netfault import PartitionProxy
from tests.support.agent_world import World

pytestmark = pytest.mark.integration


async def test_agent_stops_even_when_the_network_is_cut(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    world = World(tmp_path, mosquitto)
    async with PartitionProxy(mosquitto.port) as proxy:
        settings = world.settings()
        settings = settings.model_copy(update={"broker_port": proxy.port})
        agent = Agent(settings)
        await agent.__aenter__()
        assert await agent.wait_connected(timeout=20)
        proxy.partition()
        started = time.monotonic()
        await asyncio.wait_for(agent.__aexit__(None, None, None), timeout=60)
        # aiomqtt waits up to its 10 s timeout for the broker's goodbye, then gives up
        assert time.monotonic() - started < 30
        assert agent.link is not None
        assert not agent.link.connected.is_set()
