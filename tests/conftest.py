"""Shared fixtures and the tiers: a real Mosquitto per session on a free port, the embedded
broker; `integration` marked by folder and by fixture; the fast tier guarded against brokers,
subprocesses and blocking calls on the event loop."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.brokers import EmbeddedBroker, MosquittoProcess
from tests.support.blocking import no_blocking_calls_on_the_loop

# Folders whose every test talks to a real broker or real processes.
INTEGRATION_FOLDERS = ("e2e", "faults")
# Fixtures that start a broker or a database server (and so everything built on them:
# `world`, `gateway`, `postgres_url`, ...).
BROKER_FIXTURES = frozenset({"mosquitto", "own_mosquitto", "amqtt_broker", "postgres"})
# A parametrised backend fixture whose PostgreSQL case starts the private server.
SERVER_PARAMS = {"gateway_db": "postgresql"}
TESTS = Path(__file__).parent
# Files that run on one xdist worker, one after another (`--dist loadgroup`): those that put
# real mDNS packets on the loopback LAN, so no test's discovery sees another test's household;
# those of one NATS cluster (module-scoped: one cluster, not one per worker, on 2 cores).
XDIST_GROUPS = {
    "agent/test_household_join.py": "lan",
    "agent/test_household_lan.py": "lan",
    "faults/test_household_coordinator_kill.py": "lan",
    "e2e/test_e2e_demo.py": "lan",
    "faults/test_nats_cluster.py": "nats",
    "faults/test_agent_failover.py": "nats",
}
UNPACED_ENV = {
    "EDGEMART_DECISIONS__QUIET_HOURS": "[]",
    "EDGEMART_DECISIONS__OFFER_PER_DAY": "10000",
    "EDGEMART_DECISIONS__CAMPAIGN_PER_DAY": "10000",
    "EDGEMART_DECISIONS__GLOBAL_PER_DAY": "100000",
    "EDGEMART_DECISIONS__SURFACE_PER_DAY__PHONE_NOTIFICATION": "10000",
}
"""Agents this run starts in other processes (`edgemart agent run`) or from the environment run
without the shipped profiles' quiet hours and daily caps (issue 18), so no test depends on the
hour it runs; in-process agents get the same from `tests.support.builders.unpaced`."""
for _name, _value in UNPACED_ENV.items():
    os.environ.setdefault(_name, _value)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `integration` every test under tests/e2e and tests/faults, and every test that
    asks (directly or through another fixture) for a broker or database-server fixture, or
    runs on the PostgreSQL case of `gateway_db`. Tests that spawn a
    process are marked in their files; the fast tier's guard below fails those it missed."""
    for item in items:
        folder = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_server = any(params.get(name) == value for name, value in SERVER_PARAMS.items())
        if folder in INTEGRATION_FOLDERS or fixtures & BROKER_FIXTURES or on_server:
            item.add_marker(pytest.mark.integration)
        group = XDIST_GROUPS.get(Path(str(item.fspath)).relative_to(TESTS).as_posix())
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


class FastTierViolation(AssertionError):
    """A test outside the `integration` marker started a broker or a process."""


@pytest.fixture(autouse=True)
def _fast_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast tier (`-m "not integration and not slow"`) starts no broker and no process:
    in a test not marked `integration`, starting a subprocess (`subprocess.Popen`, and so
    `subprocess.run` and asyncio's subprocesses) or one of our brokers fails the test.
    Narrow on purpose: `os.fork`/`os.system` are not watched."""
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise FastTierViolation(
            f"{request.node.nodeid} starts a broker or a subprocess: mark it "
            "`@pytest.mark.integration` (tests/conftest.py explains the tiers)"
        )

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(MosquittoProcess, "start", refuse)
    monkeypatch.setattr(EmbeddedBroker, "__aenter__", refuse)


@pytest.fixture(autouse=True)
def _no_blocking_calls_on_the_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """In the fast tier, a blocking call (sleep, file or socket I/O, SQLite) made on the
    thread of a running event loop fails the test; see tests/support/blocking.py."""
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    with no_blocking_calls_on_the_loop():
        yield


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
