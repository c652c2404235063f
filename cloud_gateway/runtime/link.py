"""The gateway's MQTT link: a persistent session that consumes uplink and publishes downlink.

The reconnect state machine, the client, backoff, acked publish and the byte-bounded incoming
queue are `mqttlink`'s; what is the gateway's own is here: its subscriptions (shared when it
runs as one of a group), handing every message on in order, the hook after each connect, the
flush before a shutdown disconnects, and the overflow count.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from cloud_gateway.config import GatewaySettings
from cloud_gateway.errors import GatewayError, LinkDown
from mqttlink.backoff import Backoff
from mqttlink.connect import ClientOptions, Credentials
from mqttlink.connection import Connection
from mqttlink.errors import MqttLinkError
from mqttlink.logs import OutageLog
from mqttlink.reconnect import Reconnector

log = logging.getLogger(__name__)

OnMessage = Callable[[str, bytes], Awaitable[object]]
Hook = Callable[[], Awaitable[None]]

BACKOFF_START_S = 0.2
PENDING_PUBLISH_WARN = 1_000
"""Publishes awaiting their PUBACK past which aiomqtt logs a warning (something is stuck)."""


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
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._last: Connection | None = None
        """The newest session made, up or not: its queue is what the gauges show."""
        self._outage = OutageLog(log)
        self.machine = Reconnector(
            self._make_client,
            setup=self._subscribe,
            serve=self._serve,
            backoff=Backoff(initial=BACKOFF_START_S, cap=settings.reconnect_max_s),
            on_up=self._up,
            on_down=self._down,
        )
        self.connected = self.machine.connected

    @property
    def connects(self) -> int:
        return self.machine.connects

    @property
    def queued_bytes(self) -> int:
        """Payload bytes received and not yet handed to `on_message`."""
        return self._last.queued_bytes if self._last is not None else 0

    @property
    def queued_messages(self) -> int:
        """Messages received and not yet handed to `on_message` (`max_queued_incoming`)."""
        return self._last.queued_messages if self._last is not None else 0

    def options(self) -> ClientOptions:
        s = self._settings
        return ClientOptions(
            host=s.broker_host,
            port=s.broker_port,
            client_id=s.mqtt_client_id,
            credentials=Credentials.of(
                s.mqtt_username, s.mqtt_password, tls=s.broker_tls, ca_file=s.mqtt_ca_file
            ),
            **s.mqtt_session,  # persistent alone; MQTT 5 clean start in a shared group
            keepalive=30,
            timeout=s.connect_timeout_s,
            max_queued_incoming=s.max_queued_incoming,
            max_queued_incoming_bytes=s.max_queued_incoming_bytes,
            max_queued_outgoing=10_000,
            # aiomqtt warns past 10 publishes awaiting their PUBACK; pushes and claim results
            # go out 64 at a time by design, so that flooded the log at every launch.
            pending_publish_warn=PENDING_PUBLISH_WARN,
        )

    def _make_client(self) -> Connection:
        self._last = Connection(self.options(), on_overflow=self._overflow)
        return self._last

    def _overflow(self) -> None:
        self.counters["uplink_overflow"] += 1

    async def run(self) -> None:
        """Connect, subscribe, consume; reconnect on loss until cancelled."""
        await self.machine.run()

    async def _subscribe(self, conn: Connection) -> None:
        for flt in self._settings.topics.gateway_filters(self._settings.shared_group):
            await conn.subscribe(flt, qos=1)

    async def stop_uplink(self) -> None:
        """In a shared group, unsubscribe from the uplink (a drain): what the broker already
        handed over is still consumed, the rest goes to the other members. Alone, nothing:
        the persistent session keeps the subscription, so uplink waits for the restart."""
        conn = self.machine.connection
        if conn is None or self._settings.shared_group is None:
            return
        for flt in self._settings.topics.gateway_filters(self._settings.shared_group):
            await conn.unsubscribe(flt)

    def _up(self, conn: Connection) -> None:
        self._outage.up(self._settings.broker, f"as {conn.client_id}")

    def _down(self, error: MqttLinkError, delay: float) -> None:
        self._outage.down(self._settings.broker, error, delay)

    async def _serve(self, conn: Connection) -> None:
        # The hook publishes (and waits for PUBACKs) while messages are consumed: the
        # consumer is what notices a lost session, so it must not wait on it.
        hook = asyncio.create_task(self._connected_hook(), name="mqtt-link-hook")
        try:
            async for message in conn.messages():
                await self._deliver(message.topic, message.payload)
        except asyncio.CancelledError:
            if self._before_disconnect is not None:
                await asyncio.shield(self._before_disconnect())
            raise
        finally:
            hook.cancel()

    async def _connected_hook(self) -> None:
        if self._on_connected is None:
            return
        try:
            await self._on_connected()
        except GatewayError as exc:
            log.warning("after connecting: %s", exc)
        except Exception:
            log.exception("after connecting: the hook failed")

    async def _deliver(self, topic: str, payload: bytes) -> None:
        """Hand one message on; whatever happens, the consumer loop goes on."""
        try:
            await self._on_message(topic, payload)
        except Exception:
            # A bug in a handler must not stop consumption: logged with its traceback.
            log.exception("handling a message on %s failed", topic[:200])

    def _live(self, topic: str) -> Connection:
        conn = self.machine.connection
        if conn is None:
            raise LinkDown(f"MQTT link is down: cannot publish to {topic}")
        return conn

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """Queue a QoS 1 publish in the MQTT client and return without waiting for the PUBACK
        (the client sends it, and again after a reconnect of this persistent session); LinkDown
        when there is no session or the client's outgoing queue is full."""
        try:
            self._live(topic).publish_nowait(topic, payload, qos=1)
        except MqttLinkError as exc:
            raise LinkDown(str(exc)) from exc

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 1; LinkDown when there is no session right now."""
        conn = self._live(topic)
        try:
            await conn.publish(topic, payload, qos=1, retain=retain)
        except MqttLinkError as exc:
            raise LinkDown(f"publish to {topic} failed: {exc}") from exc
