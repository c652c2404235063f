"""The reconnect machine over several brokers, against real Mosquittos: a dead broker in the
list costs one refused connect and no backoff step; a lost session moves to the next at once."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from mqttlink.backoff import Backoff
from mqttlink.connect import ClientOptions
from mqttlink.connection import Connection
from mqttlink.errors import MqttLinkError
from mqttlink.reconnect import Reconnector
from mqttlink.rotation import Rotation
from simulators.brokers import MosquittoProcess, free_port

pytestmark = pytest.mark.integration

SLOW_BACKOFF = 5.0  # longer than any test here waits: a backoff step would show as a timeout


def machine(ports: list[int], downs: list[tuple[str, float]]) -> Reconnector:
    """A machine over the brokers on `ports`, recording each failure with its delay."""
    rotation = Rotation(len(ports))

    def connect() -> Connection:
        port = ports[rotation.current]
        return Connection(ClientOptions("127.0.0.1", port, "failover-test", timeout=3.0))

    async def setup(conn: Connection) -> None:
        await conn.subscribe("failover-test/#", qos=1)

    async def serve(conn: Connection) -> None:
        async for _message in conn.messages():
            pass

    def down(error: MqttLinkError, delay: float) -> None:
        downs.append((str(error), delay))

    return Reconnector(
        connect,
        setup=setup,
        serve=serve,
        backoff=Backoff(initial=SLOW_BACKOFF, cap=SLOW_BACKOFF, rng=random.Random(1)),
        on_down=down,
        rotation=rotation,
        stable_s=0.2,
    )


async def test_a_dead_broker_first_in_the_list_costs_no_backoff(
    own_mosquitto: MosquittoProcess,
) -> None:
    dead = free_port()
    downs: list[tuple[str, float]] = []
    link = machine([dead, own_mosquitto.port], downs)
    started = time.monotonic()
    running = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 3)
        assert time.monotonic() - started < 2
        assert link.rotation.current == 1
        assert len(downs) == 1
        assert f"127.0.0.1:{dead}" in downs[0][0] and downs[0][1] == 0.0
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


async def test_a_lost_session_moves_to_the_next_broker_at_once_then_backs_off_after_a_round(
    own_mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    second = MosquittoProcess(str(tmp_path / "second"))
    second.start()
    downs: list[tuple[str, float]] = []
    link = machine([own_mosquitto.port, second.port], downs)
    running = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 3)
        assert link.rotation.current == 0
        await asyncio.sleep(0.3)  # the session holds (stable_s)

        own_mosquitto.kill()
        killed = time.monotonic()
        await asyncio.sleep(0.1)
        await asyncio.wait_for(link.connected.wait(), 3)  # far less than a backoff step
        assert time.monotonic() - killed < 2
        assert link.rotation.current == 1 and link.connects == 2
        assert [delay for _, delay in downs] == [0.0]
        await asyncio.sleep(0.3)

        second.kill()  # the round: 1 lost, 0 refused, then the backoff before 1 again
        await asyncio.sleep(1.0)
        delays = [delay for _, delay in downs]
        assert delays[:2] == [0.0, 0.0] and len(delays) == 3
        assert SLOW_BACKOFF / 2 <= delays[2] <= SLOW_BACKOFF
        assert not link.connected.is_set()
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        second.kill()
