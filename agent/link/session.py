"""The MQTT link: persistent session, birth and will, subscriptions, reconnect state machine."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiomqtt

from agent.config import AgentSettings
from agent.errors import LinkDown
from agent.runtime.metrics import Metrics
from mqttlink.session import on_session_lost, publish_acked
from protocol import codec
from protocol.envelopes import State
from protocol.ids import utcnow

log = logging.getLogger(__name__)


class LinkState(StrEnum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    CONNECTED = "connected"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A downlink message in our own terms: what it is (`Topics.parse_downlink`) and its bytes."""

    kind: str
    subject: str
    topic: str
    payload: bytes
    retained: bool


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with jitter: each delay is uniform in [base/2, base]."""

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return self.rng.uniform(base / 2, base)

    def reset(self) -> None:
        self.attempt = 0


Handler = Callable[[Incoming], Awaitable[None]]


class Link:
    """Keeps one persistent MQTT session up and turns its messages into `Incoming`.

    States: offline -> connecting -> connected -> (error) offline -> wait backoff -> ...
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
        self.backoff = backoff or Backoff()
        self.state = LinkState.OFFLINE
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None

    def filters(self) -> list[str]:
        device = self.settings.device_id
        profile = self.settings.profile
        return [
            self.topics.device_downlink(device),
            *(self.topics.cohort_offers(c) for c in profile.cohorts),
            self.topics.model_manifest(profile.name),
            self.topics.keys(),
        ]

    def _offline_state(self) -> bytes:
        return codec.encode(State(device_id=self.settings.device_id, status="offline"))

    async def run(self) -> None:
        """Connect, serve, reconnect; forever until cancelled."""
        while True:
            self.state = LinkState.CONNECTING
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                _reraise_if_cancelling()
                self._metrics.inc("link_failures")
                log.info("link to %s down: %s", self.settings.broker_host, exc)
            finally:
                self._client = None
                self.connected.clear()
                self.state = LinkState.OFFLINE
            delay = self.backoff.next_delay()
            log.debug("reconnecting in %.2f s", delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        settings = self.settings
        will = aiomqtt.Will(
            self.topics.state(settings.device_id), self._offline_state(), qos=1, retain=True
        )
        client = aiomqtt.Client(
            settings.broker_host,
            settings.broker_port,
            identifier=settings.device_id,
            clean_session=False,
            will=will,
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=settings.mqtt_keepalive_s,
            timeout=10.0,
            max_queued_incoming_messages=10_000,
            **mqtt_auth(settings),
        )
        on_session_lost(client, None)  # a failed connect: its error is read, not logged
        async with client:
            await publish_acked(
                client,
                self.topics.state(settings.device_id),
                codec.encode(self._birth()),
                qos=1,
                retain=True,
            )
            for topic in self.filters():
                await client.subscribe(topic, qos=1)
            self._client = client
            self.state = LinkState.CONNECTED
            self.connected.set()
            on_session_lost(client, self._lost)  # down at once, not when a reader next looks
            self.backoff.reset()
            self._metrics.inc("link_connects")
            log.info(
                "link up: %s:%d as %s",
                settings.broker_host,
                settings.broker_port,
                settings.device_id,
            )
            self._on_connected()
            async for message in client.messages:
                await self._dispatch(message)

    def _lost(self) -> None:
        self.connected.clear()
        self.state = LinkState.OFFLINE

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        parsed = self.topics.parse_downlink(topic)
        payload = message.payload
        if parsed is None or not isinstance(payload, bytes | bytearray):
            self._metrics.inc("messages_bad")
            log.debug("ignoring message on %s", topic)
            return
        kind, subject = parsed
        if kind in ("ack", "offers", "claim", "cmd") and subject != self.settings.device_id:
            self._metrics.inc("messages_bad")
            return
        incoming = Incoming(kind, subject, topic, bytes(payload), bool(message.retain))
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
        client = self._client
        if client is None or self.state is not LinkState.CONNECTED:
            raise LinkDown("not connected")
        try:
            await publish_acked(client, topic, payload, qos=qos, retain=retain, timeout=timeout)
        except aiomqtt.MqttError as exc:
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


def mqtt_auth(settings: AgentSettings) -> dict[str, Any]:
    """aiomqtt's username, password and TLS arguments for the device's own credentials."""
    password = settings.mqtt_password
    tls = None
    if settings.mqtt_tls:
        ca = str(settings.mqtt_ca_file) if settings.mqtt_ca_file is not None else None
        tls = aiomqtt.TLSParameters(ca_certs=ca)
    return {
        "username": settings.mqtt_username,
        "password": password.get_secret_value() if password is not None else None,
        "tls_params": tls,
    }


def _reraise_if_cancelling() -> None:
    """aiomqtt's `__aexit__` waits for the broker's goodbye and, when that times out, raises
    MqttError in place of the CancelledError that started the exit. A reconnect loop that
    caught it would run on after its task was cancelled (seen as a hang at shutdown), so a
    task being cancelled stops here instead."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
