"""Shared fixtures: a real Mosquitto per test session on a free port, the embedded broker."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from simulators.brokers import EmbeddedBroker, MosquittoProcess


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


WATCHDOG_S = float(os.environ.get("TEST_WATCHDOG_S", "120"))


@pytest.fixture(autouse=True)
def _pending_task_report() -> Iterator[None]:
    """When a test runs past TEST_WATCHDOG_S, print where every pending asyncio task
    waits, so a hang in CI leaves evidence before pytest-timeout ends it."""
    done = threading.Event()

    def watch() -> None:
        if done.wait(WATCHDOG_S):
            return
        sys.stderr.write(f"\n--- tests running past {WATCHDOG_S:.0f}s; pending asyncio tasks:\n")
        for obj in gc.get_objects():
            if isinstance(obj, asyncio.Task) and not obj.done():
                sys.stderr.write(f"task {obj.get_name()}\n")
                for frame in obj.get_stack():
                    code = frame.f_code
                    sys.stderr.write(f"    {code.co_filename}:{frame.f_lineno} {code.co_name}\n")

    threading.Thread(target=watch, name="test-watchdog", daemon=True).start()
    yield
    done.set()
