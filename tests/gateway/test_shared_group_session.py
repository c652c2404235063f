"""A gateway in a shared group connects as an MQTT 5 client with clean start and session
expiry 0: once a member is gone the broker hands all of the group's uplink to those left,
instead of parking a share for the dead one (what a persistent session does on Mosquitto)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiomqtt
import pytest

from cloud_gateway.config import load_settings
from cloud_gateway.runtime.link import MqttLink
from mqttlink.connect import MqttVersion
from simulators.brokers import MosquittoProcess
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

MESSAGES = 40


def test_alone_the_session_persists_in_a_group_it_is_mqtt5_clean(tmp_path: Path) -> None:
    async def ignore(_topic: str, _payload: bytes) -> None:
        return None

    broker = "mqtt://127.0.0.1:1999"  # settings only: nothing connects
    alone = MqttLink(load_settings(broker=broker, data_dir=tmp_path), ignore).options()
    assert (alone.clean_start, alone.version) == (False, MqttVersion.V311)
    grouped = load_settings(broker=broker, data_dir=tmp_path, shared_group="gateway")
    member = MqttLink(grouped, ignore).options()
    assert (member.clean_start, member.session_expiry_s, member.version) == (
        True,
        0,
        MqttVersion.V5,
    )


async def test_a_departed_member_gets_no_share_of_the_uplink(
    own_mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    first = gateway_settings(tmp_path / "a", own_mosquitto, shared_group="gateway")
    second = gateway_settings(
        tmp_path / "b", own_mosquitto, shared_group="gateway", topic_root=first.topic_root
    )
    received: list[str] = []

    async def keep(topic: str, _payload: bytes) -> None:
        received.append(topic)

    async def ignore(_topic: str, _payload: bytes) -> None:
        return None

    gone = MqttLink(first, ignore)
    running = asyncio.create_task(gone.run())
    await asyncio.wait_for(gone.connected.wait(), 10)
    running.cancel()  # the member leaves; its client id never comes back
    with contextlib.suppress(asyncio.CancelledError):
        await running
    stays = MqttLink(second, keep)
    serving = asyncio.create_task(stays.run())
    try:
        await asyncio.wait_for(stays.connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", own_mosquitto.port) as device:
            for i in range(MESSAGES):
                await device.publish(first.topics.batch(f"tv-{i:04d}"), b"{}", qos=1)
        # A persistent departed member would hold about half of them until it returned.
        await eventually(lambda: len(received) == MESSAGES, 10, f"all {MESSAGES} to the member")
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
