"""A subscription the broker refuses (SUBACK 0x80) is an error, not a silent success: aiomqtt
returns the refusal instead of raising, and a link that ignored it would live on without its
subscription (a NATS node refuses QoS 1 subscriptions for seconds after another node died,
docs/brokers.md). A single NATS server with MQTT refuses a filter NATS subjects cannot carry."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttlink.connect import ClientOptions
from mqttlink.connection import Connection
from mqttlink.errors import ConnectFailed, SessionLost, SubscribeRefused
from simulators.brokers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def nats_mqtt(tmp_path: Path) -> Iterator[int]:
    """A private nats-server with JetStream and MQTT on free loopback ports; its MQTT port."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        pytest.fail("nats-server missing: the test command installs it")
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f"server_name: refused\nlisten: 127.0.0.1:{free_port()}\n"
        f"jetstream {{ store_dir: {tmp_path / 'js'} }}\nmqtt {{ listen: 127.0.0.1:{port} }}\n"
    )
    proc = subprocess.Popen(  # a fixed binary and our own config
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def connected(options: ClientOptions) -> Connection:
    for _ in range(100):  # JetStream makes its MQTT streams on the first CONNECT
        conn = Connection(options)
        try:
            await conn.__aenter__()
        except ConnectFailed:
            await asyncio.sleep(0.1)
            continue
        return conn
    raise AssertionError("the NATS MQTT listener never accepted a connection")


async def test_a_refused_subscription_raises_and_an_allowed_one_does_not(nats_mqtt: int) -> None:
    conn = await connected(ClientOptions("127.0.0.1", nats_mqtt, "refused-test", timeout=5.0))
    try:
        await conn.subscribe("edgemart/v1/dev/d1/down/#", qos=1)
        with pytest.raises(SubscribeRefused) as refused:
            await conn.subscribe("no spaces in/nats subjects", qos=1)
        assert refused.value.topic_filter == "no spaces in/nats subjects"
        assert refused.value.code >= 0x80
        assert isinstance(refused.value, SessionLost)  # the link reconnects and subscribes again
    finally:
        await conn.__aexit__(None, None, None)
