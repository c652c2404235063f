"""Fixtures of the agent tests on a real broker: the test's world, a fake gateway, a claim desk."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from simulators.brokers import MosquittoProcess
from tests.support.agent_world import FakeGateway, Responder, World
from tests.support.local_device import Client, Device, api_client, running_device


@pytest.fixture
def world(tmp_path: Path, mosquitto: MosquittoProcess) -> World:
    return World(tmp_path, mosquitto)


@contextlib.asynccontextmanager
async def _running(
    name: str, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]], timeout: float
) -> AsyncIterator[None]:
    """`run` as a task until the test ends, once it said it is ready."""
    ready = asyncio.Event()
    task = asyncio.create_task(run(ready), name=name)
    await asyncio.wait_for(ready.wait(), timeout)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def gateway(world: World) -> AsyncIterator[FakeGateway]:
    gw = FakeGateway(world)
    async with _running("fake-gateway", gw.run, 5):
        yield gw


@pytest.fixture
async def responder(world: World) -> AsyncIterator[Responder]:
    desk = Responder(world)
    async with _running("claim-responder", desk.run, 10):
        yield desk


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[Device]:
    """A tv agent over a fake transport (no broker)."""
    async with running_device(tmp_path) as dev:
        yield dev


@pytest.fixture
async def client(device: Device) -> AsyncIterator[Client]:
    """The device's local API, in-process, as the admin app (the agent's all-scopes token)."""
    async with await api_client(device) as test_client:
        yield test_client
