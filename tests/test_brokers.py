"""The brokers the suite and demo stand on: a real Mosquitto and the embedded amqtt."""

from __future__ import annotations

import aiomqtt

from edgemart.broker import EmbeddedBroker, MosquittoProcess


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
