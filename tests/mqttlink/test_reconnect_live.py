"""The shared reconnect state machine and acked publish against a real Mosquitto that dies
and comes back (fixture `own_mosquitto`)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest

from mqttlink.backoff import Backoff
from mqttlink.connect import ClientOptions, MqttVersion
from mqttlink.connection import Connection
from mqttlink.errors import ConnectFailed, MqttLinkError, SessionEnded
from mqttlink.reconnect import LinkState, Reconnector
from simulators.brokers import MosquittoProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def machine(broker: MosquittoProcess, seen: list[LinkState]) -> Reconnector:
    options = ClientOptions("127.0.0.1", broker.port, "mqttlink-test", timeout=3.0, keepalive=5)
    served: list[str] = []

    async def setup(conn: Connection) -> None:
        await conn.subscribe("mqttlink-test/#", qos=1)

    async def serve(conn: Connection) -> None:
        async for message in conn.messages():
            served.append(message.topic)

    reconnector = Reconnector(
        lambda: Connection(options),
        setup=setup,
        serve=serve,
        backoff=Backoff(initial=0.05, cap=0.2, rng=random.Random(1)),
    )
    reconnector.watch(seen.append)
    return reconnector


async def test_the_machine_backs_off_while_the_broker_is_dead_and_reconnects(
    own_mosquitto: MosquittoProcess,
) -> None:
    seen: list[LinkState] = []
    link = machine(own_mosquitto, seen)
    assert link.state is LinkState.IDLE
    running = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        assert seen == [LinkState.CONNECTING, LinkState.CONNECTED]
        assert link.connection is not None

        own_mosquitto.kill()
        await eventually(lambda: not link.connected.is_set(), 5, "the loss is seen at once")
        await eventually(lambda: seen.count(LinkState.CONNECTING) >= 3, 10, "it retries")
        assert link.connection is None
        assert link.state in (LinkState.CONNECTING, LinkState.BACKING_OFF)

        own_mosquitto.start()
        await asyncio.wait_for(link.connected.wait(), 10)
        assert link.connects == 2
        # every step of the walk is one the machine allows, and it came back
        walk = list(seen)
        assert walk[:4] == [
            LinkState.CONNECTING,
            LinkState.CONNECTED,
            LinkState.BACKING_OFF,
            LinkState.CONNECTING,
        ]
        assert walk[-1] is LinkState.CONNECTED
        allowed = {
            (LinkState.CONNECTING, LinkState.CONNECTED),
            (LinkState.CONNECTING, LinkState.BACKING_OFF),
            (LinkState.CONNECTED, LinkState.BACKING_OFF),
            (LinkState.BACKING_OFF, LinkState.CONNECTING),
        }
        assert set(itertools.pairwise(walk)) <= allowed
        assert link.backoff.attempt == 0  # reset once connected
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert link.state is LinkState.CLOSED
    assert not link.connected.is_set()


async def test_an_acked_publish_fails_at_once_when_the_session_ends(
    own_mosquitto: MosquittoProcess,
) -> None:
    """A hung broker (SIGSTOP) takes the PUBLISH and never acks; when it dies, the waiting
    publish fails within a moment, long before aiomqtt's 10 s timeout."""
    options = ClientOptions("127.0.0.1", own_mosquitto.port, "mqttlink-pub", timeout=10.0)
    async with Connection(options) as conn:
        lost = asyncio.Event()
        conn.on_lost(lost.set)
        await conn.publish("mqttlink-test/ok", b"1")  # acked while the broker is healthy
        own_mosquitto.pause()
        sending = asyncio.create_task(conn.publish("mqttlink-test/probe", b"{}"))
        await asyncio.sleep(0.3)
        assert not sending.done()
        own_mosquitto.kill()
        started = time.monotonic()
        with pytest.raises(SessionEnded) as raised:
            await asyncio.wait_for(sending, 5)
        assert time.monotonic() - started < 3
        assert raised.value.topic == "mqttlink-test/probe"
        assert isinstance(raised.value, MqttLinkError)
        await asyncio.wait_for(lost.wait(), 3)


async def test_a_refused_connect_is_our_error_not_aiomqtts(own_mosquitto: MosquittoProcess) -> None:
    own_mosquitto.kill()
    options = ClientOptions("127.0.0.1", own_mosquitto.port, "mqttlink-refused", timeout=2.0)
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{own_mosquitto.port}") as raised:
        async with Connection(options):
            pass
    assert raised.value.code is None  # refused by the socket, not by a CONNACK


@pytest.mark.parametrize("version", [MqttVersion.V311, MqttVersion.V5])
async def test_a_persistent_session_gets_what_was_sent_while_it_was_away(
    mosquitto: MosquittoProcess, version: MqttVersion
) -> None:
    """clean_start=False (and an MQTT 5 session expiry) keep the subscription and the QoS 1
    messages queued for it; clean_start=True starts empty."""
    topic = f"mqttlink-test/persist/{version.value}"

    def options(client_id: str, *, clean: bool) -> ClientOptions:
        return ClientOptions(
            "127.0.0.1",
            mosquitto.port,
            client_id,
            clean_start=clean,
            session_expiry_s=300 if version is MqttVersion.V5 else None,
            version=version,
            timeout=5.0,
        )

    async with Connection(options(f"keeper-{version.value}", clean=True)) as conn:
        await conn.subscribe(topic, qos=1)  # a fresh session
    async with Connection(options(f"keeper-{version.value}", clean=False)) as conn:
        await conn.subscribe(topic, qos=1)
    async with Connection(options(f"sender-{version.value}", clean=True)) as sender:
        await sender.publish(topic, b"while away", qos=1)
    async with Connection(options(f"keeper-{version.value}", clean=False)) as conn:
        got = await asyncio.wait_for(anext(aiter(conn.messages())), 5)
    assert (got.topic, got.payload, got.qos) == (topic, b"while away", 1)
