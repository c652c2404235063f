"""Shared fixtures: a real Mosquitto per test session on a free port, the embedded broker."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edgemart.broker import EmbeddedBroker, MosquittoProcess


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    """A real Mosquitto on a free loopback port, shared by the session's tests."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: the test command installs it (see README)")
    broker = MosquittoProcess(str(tmp_path_factory.mktemp("mosquitto")))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto of this test's own, free to be killed and restarted."""
    broker = MosquittoProcess(str(tmp_path / "mosquitto"))
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
async def amqtt_broker() -> AsyncIterator[EmbeddedBroker]:
    """The embedded amqtt broker in this test's event loop."""
    async with EmbeddedBroker() as broker:
        yield broker
