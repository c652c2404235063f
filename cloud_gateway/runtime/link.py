"""The gateway's MQTT link: a persistent aiomqtt session that consumes, publishes, reconnects."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import aiomqtt
import paho.mqtt.client as mqtt

from cloud_gateway.config import GatewaySettings
from cloud_gateway.errors import GatewayError, LinkDown
from mqttlink.session import on_session_lost, publish_acked

log = logging.getLogger(__name__)

OnMessage = Callable[[str, bytes], Awaitable[object]]
Hook = Callable[[], Awaitable[None]]

BACKOFF_START_S = 0.2
PENDING_PUBLISH_WARN = 1_000
"""Publishes awaiting their PUBACK past which aiomqtt logs a warning (something is stuck)."""


def backoff_delays(cap: float, start: float = BACKOFF_START_S) -> Callable[[], float]:
    """Capped exponential backoff with full jitter; `reset()` by making a new one."""
    attempt = 0

    def next_delay() -> float:
        nonlocal attempt
        ceiling = min(cap, start * (2**attempt))
        attempt = min(attempt + 1, 30)
        return random.uniform(ceiling / 2, ceiling)

    return next_delay


class MqttLink:
    """Keeps one session to the broker; hands every message to `on_message` in order.

    `on_connected` runs after each (re)subscription; `before_disconnect` runs on shutdown
    while the session is still up (to flush acks).

    A message that finds the client's incoming queue full (`max_queued_incoming` messages, or
    `max_queued_incoming_bytes` of payload) is dropped and counted in
    `counters["uplink_overflow"]` (aiomqtt would drop it with only a log line): no `down/ack`
    goes back for it, so its device sends the batch again.

    Why not PUBACK only after handling, so the broker's in-flight window holds the backlog?
    Mosquitto 2.0.11 does not keep that window: with manual acks it sent ~2,700 unacked
    QoS 1 messages to a client with `max_inflight_messages 10` (the quota grows on PUBACKs).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        on_message: OnMessage,
        *,
        on_connected: Hook | None = None,
        before_disconnect: Hook | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        self._settings = settings
        self._on_message = on_message
        self._on_connected = on_connected
        self._before_disconnect = before_disconnect
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.queued_bytes = 0
        """Payload bytes received and not yet handed to `on_message`."""
        self._queue: asyncio.Queue[aiomqtt.Message] | None = None

    def _make_client(self) -> aiomqtt.Client:
        s = self._settings
        password = s.mqtt_password.get_secret_value() if s.mqtt_password is not None else None
        tls = None
        if s.broker_tls:
            ca = str(s.mqtt_ca_file) if s.mqtt_ca_file is not None else None
            tls = aiomqtt.TLSParameters(ca_certs=ca)
        client = aiomqtt.Client(
            s.broker_host,
            s.broker_port,
            identifier=s.mqtt_client_id,
            clean_session=False,
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=30,
            timeout=s.connect_timeout_s,
            max_queued_incoming_messages=s.max_queued_incoming,
            max_queued_outgoing_messages=10_000,
            username=s.mqtt_username,
            password=password,
            tls_params=tls,
        )
        # aiomqtt warns past 10 publishes awaiting their PUBACK; pushes and claim results go out
        # 64 at a time by design, so that flooded the log at every launch. Warn past this.
        client.pending_calls_threshold = PENDING_PUBLISH_WARN
        on_session_lost(client, None)  # a failed connect: its error is read, not logged
        self._count_overflow(client)
        return client

    def _count_overflow(self, client: aiomqtt.Client) -> None:
        """Wraps aiomqtt's message callback (on `_client`, the paho client it wraps) to bound
        the queue's bytes and count what is dropped when it is full. Both run on the event
        loop (aiomqtt drives paho's socket from it), as does `_deliver`, which gives the bytes
        back."""
        paho = client._client
        queue = client._queue
        enqueue = paho.on_message
        if enqueue is None:
            raise RuntimeError("aiomqtt set no message callback")
        limit = self._settings.max_queued_incoming_bytes
        self.queued_bytes = 0  # a new client's queue starts empty
        self._queue = queue

        def on_message(paho_client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            size = len(msg.payload)
            if queue.full() or (self.queued_bytes and self.queued_bytes + size > limit):
                self.counters["uplink_overflow"] += 1
                return
            self.queued_bytes += size
            enqueue(paho_client, userdata, msg)

        paho.on_message = on_message

    async def run(self) -> None:
        """Connect, subscribe, consume; reconnect on loss until cancelled."""
        filters = self._settings.topics.gateway_filters(self._settings.shared_group)
        next_delay = backoff_delays(self._settings.reconnect_max_s)
        while True:
            try:
                async with self._make_client() as client:
                    for flt in filters:
                        await client.subscribe(flt, qos=1)
                    self._client = client
                    self.connects += 1
                    self.connected.set()
                    # Down as soon as paho sees the session end, not when a reader next looks.
                    on_session_lost(client, self.connected.clear)
                    next_delay = backoff_delays(self._settings.reconnect_max_s)
                    log.info("MQTT link up to %s as %s", self._settings.broker, client.identifier)
                    # The hook publishes (and waits for PUBACKs) while messages are consumed:
                    # the consumer is what notices a lost session, so it must not wait on it.
                    hook = asyncio.create_task(self._connected_hook(), name="mqtt-link-hook")
                    try:
                        async for message in client.messages:
                            await self._deliver(message)
                    except asyncio.CancelledError:
                        if self._before_disconnect is not None:
                            await asyncio.shield(self._before_disconnect())
                        raise
                    finally:
                        hook.cancel()
                        self._client = None
                        self.connected.clear()
            except aiomqtt.MqttError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # aiomqtt's __aexit__ replaced our cancellation with a disconnect timeout
                    raise asyncio.CancelledError from exc
                delay = next_delay()
                log.warning("MQTT link down (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _connected_hook(self) -> None:
        if self._on_connected is None:
            return
        try:
            await self._on_connected()
        except GatewayError as exc:
            log.warning("after connecting: %s", exc)
        except Exception:
            log.exception("after connecting: the hook failed")

    async def _deliver(self, message: aiomqtt.Message) -> None:
        """Hand one message on; whatever happens, the consumer loop goes on."""
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode() if payload is not None else b""
        self.queued_bytes = max(0, self.queued_bytes - len(payload))
        topic = message.topic.value
        try:
            await self._on_message(topic, bytes(payload))
        except Exception:
            # A bug in a handler must not stop consumption: logged with its traceback.
            log.exception("handling a message on %s failed", topic[:200])

    @property
    def queued_messages(self) -> int:
        """Messages received and not yet handed to `on_message` (`max_queued_incoming`)."""
        return self._queue.qsize() if self._queue is not None else 0

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """Queue a QoS 1 publish in the MQTT client and return without waiting for the PUBACK
        (the client sends it, and again after a reconnect of this persistent session); LinkDown
        when there is no session or the client's outgoing queue is full."""
        client = self._client
        if client is None:
            raise LinkDown(f"MQTT link is down: cannot publish to {topic}")
        # aiomqtt's publish waits for the PUBACK (a future per message); paho's own publish,
        # which aiomqtt wraps, queues the message and returns.
        info = client._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkDown(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 1; LinkDown when there is no session right now."""
        client = self._client
        if client is None:
            raise LinkDown(f"MQTT link is down: cannot publish to {topic}")
        try:
            await publish_acked(client, topic, payload, qos=1, retain=retain)
        except aiomqtt.MqttError as exc:
            raise LinkDown(f"publish to {topic} failed: {exc}") from exc
