"""The brokers the suite and demo stand on: a real Mosquitto and the embedded amqtt."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest
from amqtt.broker import Broker

import simulators.brokers
from simulators.brokers import EmbeddedBroker, MosquittoProcess


async def _roundtrip(port: int) -> bytes:
    async with aiomqtt.Client("127.0.0.1", port, identifier="edgemart-test-rt") as client:
        await client.subscribe("edgemart-test/#", qos=1)
        await client.publish("edgemart-test/x", b"hello", qos=1)
        async for message in client.messages:
            return message.payload
    raise AssertionError("no message")


async def test_mosquitto_roundtrip(mosquitto: MosquittoProcess) -> None:
    assert await _roundtrip(mosquitto.port) == b"hello"


async def test_embedded_broker_roundtrip(amqtt_broker: EmbeddedBroker) -> None:
    assert await _roundtrip(amqtt_broker.port) == b"hello"


@pytest.mark.integration  # spawns a process or starts a broker
async def test_the_embedded_broker_restarts_on_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped and started again on the same port (what `edgemart fleet`'s broker-restart
    does), also when amqtt's own shutdown hangs: the listeners are closed after the bound."""
    broker = EmbeddedBroker()
    async with broker:
        assert await _roundtrip(broker.port) == b"hello"
    async with broker:
        assert await _roundtrip(broker.port) == b"hello"
        hung = asyncio.Event()

        async def hang(self: Broker) -> None:
            await hung.wait()  # amqtt 0.12.1 was seen stuck here under a reconnect storm

        monkeypatch.setattr(Broker, "shutdown", hang)
        monkeypatch.setattr(simulators.brokers, "SHUTDOWN_TIMEOUT_S", 0.5)
    monkeypatch.undo()
    async with broker:  # binds the same port again
        assert await _roundtrip(broker.port) == b"hello"
