"""The agent's MQTT link: persistent session, birth and will, subscriptions, downlink dispatch.

The reconnect state machine, the client, backoff and acked publish are `mqttlink`'s; what is
the agent's own is here: a persistent session under the device id, a retained birth on its
`state` topic (and a retained offline will), QoS 1 subscriptions, and downlink messages
turned into `Incoming` for the router. Given several brokers (a cluster's nodes), it keeps one
session (client id, clean session off) and moves it to the next node when one fails
(`mqttlink.rotation`), so a cluster that shares sessions resumes it there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from agent.config import AgentSettings
from agent.errors import LinkDown
from agent.runtime.metrics import Metrics
from mqttlink import reconnect
from mqttlink.backoff import Backoff
from mqttlink.connect import ClientOptions, Credentials, Will
from mqttlink.connection import Connection, Message
from mqttlink.errors import MqttLinkError
from mqttlink.logs import OutageLog
from mqttlink.reconnect import Reconnector
from mqttlink.rotation import Rotation
from protocol import codec
from protocol.envelopes import State
from protocol.ids import utcnow

log = logging.getLogger(__name__)


class LinkState(StrEnum):
    """The link as the agent's status reports it."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    CONNECTED = "connected"


_SHOWN = {
    reconnect.LinkState.CONNECTING: LinkState.CONNECTING,
    reconnect.LinkState.CONNECTED: LinkState.CONNECTED,
}


@dataclass(frozen=True, slots=True)
class Incoming:
    """A downlink message in our own terms: what it is (`Topics.parse_downlink`) and its bytes."""

    kind: str
    subject: str
    topic: str
    payload: bytes
    retained: bool


Handler = Callable[[Incoming], Awaitable[None]]


class Link:
    """Keeps one persistent MQTT session up and turns its messages into `Incoming`.

    On every connect: retained birth on `state`, QoS 1 subscriptions, `on_connected()`.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        birth: Callable[[], State],
        on_message: Handler,
        on_connected: Callable[[], None],
        metrics: Metrics,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self._birth = birth
        self._on_message = on_message
        self._on_connected = on_connected
        self._metrics = metrics
        self.machine = Reconnector(
            self._connection,
            setup=self._setup,
            serve=self._serve,
            backoff=backoff
            or Backoff(
                initial=settings.mqtt_reconnect_s,
                cap=max(settings.mqtt_reconnect_max_s, settings.mqtt_reconnect_s),
                full_jitter=True,
            ),
            on_up=self._up,
            on_down=self._down,
            rotation=Rotation(len(settings.brokers)),
        )
        self.connected = self.machine.connected
        self._outage = OutageLog(log)

    @property
    def state(self) -> LinkState:
        return _SHOWN.get(self.machine.state, LinkState.OFFLINE)

    def filters(self) -> list[str]:
        device = self.settings.device_id
        profile = self.settings.profile
        # the keys first: the broker hands retained messages out in this order, and what
        # follows may be signed by a key the retained list brings (issue 14)
        return [
            self.topics.keys(),
            self.topics.timestamp(),
            self.topics.device_downlink(device),
            *(self.topics.cohort_offers(c) for c in profile.cohorts),
            *(self.topics.cohort_policy(c) for c in profile.cohorts),
            *(self.topics.cohort_soldout(c) for c in profile.cohorts),
            self.topics.model_manifest(profile.name),
        ]

    @property
    def broker(self) -> str:
        """The broker the link is on or trying now, as a URL without credentials."""
        return self.options().broker

    def options(self) -> ClientOptions:
        """The session's options on the broker to try now (the same session on every one)."""
        s = self.settings
        host, port = s.brokers[self.machine.rotation.current]
        offline = codec.encode(State(device_id=s.device_id, status="offline"))
        return ClientOptions(
            host=host,
            port=port,
            client_id=s.device_id,
            credentials=Credentials.of(
                s.mqtt_username,
                s.mqtt_password,
                tls=s.mqtt_tls,
                ca_file=s.mqtt_ca_file,
                cert_file=s.mqtt_cert_file,
                key_file=s.mqtt_key_file,
            ),
            clean_start=False,
            will=Will(self.topics.state(s.device_id), offline, qos=1, retain=True),
            keepalive=s.mqtt_keepalive_s,
            timeout=10.0,
            max_queued_incoming=10_000,
        )

    def _connection(self) -> Connection:
        return Connection(self.options())

    async def run(self) -> None:
        """Connect, serve, reconnect; forever until cancelled."""
        await self.machine.run()

    async def _setup(self, conn: Connection) -> None:
        await conn.publish(
            self.topics.state(self.settings.device_id),
            codec.encode(self._birth()),
            qos=1,
            retain=True,
        )
        for topic in self.filters():
            await conn.subscribe(topic, qos=1)

    def _up(self, conn: Connection) -> None:
        self._metrics.inc("link_connects")
        self._outage.up(conn.options.broker, f"as {self.settings.device_id}")
        self._on_connected()

    def _down(self, error: MqttLinkError, delay: float) -> None:
        self._metrics.inc("link_failures")
        self._outage.down(self.broker, error, delay)
        if not delay:
            log.info("trying the next broker: %s", self.broker)

    async def _serve(self, conn: Connection) -> None:
        async for message in conn.messages():
            await self._dispatch(message)

    async def _dispatch(self, message: Message) -> None:
        topic = message.topic
        parsed = self.topics.parse_downlink(topic)
        if parsed is None:
            self._metrics.inc("messages_bad")
            log.debug("ignoring message on %s", topic)
            return
        kind, subject = parsed
        if kind in ("ack", "offers", "claim", "cmd") and subject != self.settings.device_id:
            self._metrics.inc("messages_bad")
            return
        incoming = Incoming(kind, subject, topic, message.payload, message.retained)
        try:
            await self._on_message(incoming)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A handler bug must not take the link down; the message is counted and dropped.
            self._metrics.inc("messages_bad")
            log.exception("handler failed for a message on %s", topic)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 10.0,  # passed to aiomqtt, which bounds the PUBACK wait
    ) -> None:
        """Publish and wait for the broker's PUBACK; LinkDown when not connected or failed."""
        conn = self.machine.connection
        if conn is None or self.state is not LinkState.CONNECTED:
            raise LinkDown("not connected")
        try:
            await conn.publish(topic, payload, qos=qos, retain=retain, timeout=timeout)
        except MqttLinkError as exc:
            raise LinkDown(f"publish to {topic} failed: {exc}") from exc

    async def say_goodbye(self) -> None:
        """Publish the retained offline state before a clean disconnect (no will fires then)."""
        try:
            await self.publish(
                self.topics.state(self.settings.device_id),
                codec.encode(
                    State(device_id=self.settings.device_id, status="offline", at=utcnow())
                ),
                retain=True,
                timeout=2.0,
            )
        except LinkDown as exc:
            log.debug("no goodbye: %s", exc)
