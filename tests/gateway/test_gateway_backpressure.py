"""A burst of uplink faster than the gateway handles it, through a real Mosquitto.

Past `max_queued_incoming` waiting messages, or `max_queued_incoming_bytes` of their payloads,
the MQTT client drops what comes (aiomqtt would, with a log line only). The gateway counts each
one as `uplink_overflow`: with a queue of 16 messages, or of 32 KiB, a burst of 3,000 batches
ends with stored + overflow = sent, nothing unaccounted for (the devices send the dropped
batches again: no ack came for them).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_gateway.runtime.gateway import Gateway
from protocol import codec
from protocol.ids import new_id
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess
from tests.support.builders import make_batch
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

DEVICES, BATCHES = 300, 10
QUEUE = 16


def _burst(port: int, topics: Topics, signals: int) -> int:
    """Publish DEVICES x BATCHES batches of `signals` signals at QoS 1 as fast as the broker
    takes them."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"burst-{new_id()}")
    client.max_inflight_messages_set(200)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [
        client.publish(
            topics.batch(f"tv-burst-{d:04d}"),
            codec.encode(make_batch(f"tv-burst-{d:04d}", seq, signals=signals)),
            qos=1,
        )
        for seq in range(1, BATCHES + 1)
        for d in range(DEVICES)
    ]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()
    return len(infos)


async def _send(port: int, topics: Topics, signals: int = 1) -> int:
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(_burst(port, topics, signals)))
    thread.start()
    await eventually(lambda: done, 60, "the burst is published")
    thread.join()
    return done[0]


async def test_an_overflow_is_counted_never_silent(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, max_queued_incoming=QUEUE)
    async with Gateway(settings) as gw:
        sent = await _send(mosquitto.port, settings.topics)
        await eventually(
            lambda: gw.counters["batches_stored"] + gw.counters["uplink_overflow"] >= sent,
            120,
            "every batch stored or counted as overflow",
        )
        assert gw.counters["uplink_overflow"] > 0  # the queue of 16 could not hold the burst
        assert gw.counters["batches_stored"] + gw.counters["uplink_overflow"] == sent


async def test_the_queue_is_bounded_in_bytes_too(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    settings = gateway_settings(
        tmp_path, mosquitto, max_queued_incoming=100_000, max_queued_incoming_bytes=32 * 1024
    )
    async with Gateway(settings) as gw:
        fullest: dict[str, int] = {}
        watching = asyncio.create_task(_watch(gw, fullest))
        sent = await _send(mosquitto.port, settings.topics, signals=40)  # ~5.6 KB a batch
        await eventually(
            lambda: gw.counters["batches_stored"] + gw.counters["uplink_overflow"] >= sent,
            120,
            "every batch stored or counted as overflow",
        )
        assert gw.counters["uplink_overflow"] > 0  # 32 KiB holds 5 of them: 100,000 did not bind
        assert gw.counters["batches_stored"] + gw.counters["uplink_overflow"] == sent
        await eventually(
            lambda: gw.gauges()["uplink_queued_bytes"] == 0, 10, "the queue gives its bytes back"
        )
        watching.cancel()
        # what /v1/stats and /metrics show: the queue filled up to its bound, never past it
        assert 0 < fullest["uplink_queued_bytes"] <= 32 * 1024
        assert fullest["uplink_queued_messages"] > 0
        assert gw.gauges()["uplink_queued_messages"] == 0


async def _watch(gw: Gateway, fullest: dict[str, int]) -> None:
    """The highest level of each gauge, read between every two steps of the event loop."""
    while True:
        for name, level in gw.gauges().items():
            fullest[name] = max(fullest.get(name, 0), level)
        await asyncio.sleep(0)
