"""One MQTT session in our own terms: connect, subscribe, publish, messages; aiomqtt stays inside.

`Connection` is what a link holds while its session is up. It speaks `Message` (a frozen
dataclass of bytes) instead of aiomqtt's message, raises only `MqttLinkError`s, bounds what
waits in the incoming queue by bytes as well as by count (a peer chooses the size of what it
sends), and says at once when the session ends (`on_lost`), not when a reader next looks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType

import aiomqtt
import paho.mqtt.client as mqtt

from mqttlink.connect import ClientOptions, make_client
from mqttlink.errors import (
    MqttLinkError,
    PublishFailed,
    SessionLost,
    SubscribeRefused,
    connect_error,
)
from mqttlink.session import on_session_lost, publish_acked

SUBACK_FAILURE = 0x80
"""A SUBACK return code at or above this refuses the subscription (MQTT 3.1.1 and 5)."""


@dataclass(frozen=True, slots=True)
class Message:
    """A received message: topic, payload bytes, whether the broker kept it retained."""

    topic: str
    payload: bytes
    retained: bool
    qos: int


class Connection:
    """`async with Connection(options) as conn:` one session; then `subscribe`, `publish`,
    `async for m in conn.messages()`. Made fresh for each (re)connect."""

    def __init__(
        self, options: ClientOptions, *, on_overflow: Callable[[], None] | None = None
    ) -> None:
        self.options = options
        self._client = make_client(options)
        on_session_lost(self._client, None)  # a failed connect: its error is read, not logged
        self._on_overflow = on_overflow
        self.queued_bytes = 0
        """Payload bytes received and not yet taken from `messages()`."""
        if options.max_queued_incoming_bytes is not None:
            self._bound_incoming(options.max_queued_incoming_bytes)

    @property
    def client(self) -> aiomqtt.Client:
        """The aiomqtt client underneath, for a caller that needs what we do not wrap."""
        return self._client

    @property
    def client_id(self) -> str:
        return self._client.identifier

    @property
    def queued_messages(self) -> int:
        """Messages received and not yet taken from `messages()`."""
        return self._client._queue.qsize()  # aiomqtt's own bounded queue

    async def __aenter__(self) -> Connection:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise connect_error(self.options.broker, exc) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._client.__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as error:
            raise SessionLost(f"disconnecting from {self.options.broker}: {error}") from error

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback()` once, from the event loop, when this session ends."""
        on_session_lost(self._client, callback)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe; SubscribeRefused when the broker's SUBACK refuses it (aiomqtt returns the
        refusal instead of raising), SessionLost when the session ends first."""
        try:
            granted = await self._client.subscribe(topic_filter, qos=qos)
        except aiomqtt.MqttError as exc:
            raise SessionLost(f"subscribing to {topic_filter}: {exc}") from exc
        for answer in granted:
            code = answer if isinstance(answer, int) else int(answer.value)
            if code >= SUBACK_FAILURE:
                raise SubscribeRefused(topic_filter, code)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Unsubscribe (the broker sends nothing more on it); SessionLost when the session ends."""
        try:
            await self._client.unsubscribe(topic_filter)
        except aiomqtt.MqttError as exc:
            raise SessionLost(f"unsubscribing from {topic_filter}: {exc}") from exc

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait for the PUBACK (QoS 1); PublishFailed, or SessionEnded at once when
        the session ends first."""
        await publish_acked(self._client, topic, payload, qos=qos, retain=retain, timeout=timeout)

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Queue a publish in the client and return without waiting for the PUBACK (the client
        sends it, and again after a reconnect of a persistent session); PublishFailed when the
        client's outgoing queue is full or it has no connection."""
        # aiomqtt's publish waits for the PUBACK (a future per message); paho's own publish,
        # which aiomqtt wraps, queues the message and returns.
        info = self._client._client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishFailed(topic, f"publish to {topic} failed: {mqtt.error_string(info.rc)}")

    async def messages(self) -> AsyncIterator[Message]:
        """Every message in arrival order until the session ends (then SessionLost)."""
        try:
            async for message in self._client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    payload = str(payload).encode() if payload is not None else b""
                self.queued_bytes = max(0, self.queued_bytes - len(payload))
                yield Message(
                    message.topic.value, bytes(payload), bool(message.retain), message.qos
                )
        except aiomqtt.MqttError as exc:
            raise SessionLost(str(exc)) from exc

    def _bound_incoming(self, limit: int) -> None:
        """Wraps aiomqtt's message callback (on `_client`, the paho client it wraps) to bound
        the queue's bytes and report what is dropped when it is full (aiomqtt would drop it
        with only a log line). Both run on the event loop (aiomqtt drives paho's socket from
        it), as does `messages()`, which gives the bytes back. A message that finds the queue
        empty is always taken, so one larger than `limit` still gets through."""
        paho = self._client._client
        queue = self._client._queue
        enqueue = paho.on_message
        if enqueue is None:
            raise MqttLinkError("aiomqtt set no message callback")

        def on_message(paho_client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            size = len(msg.payload)
            if queue.full() or (self.queued_bytes and self.queued_bytes + size > limit):
                if self._on_overflow is not None:
                    self._on_overflow()
                return
            self.queued_bytes += size
            enqueue(paho_client, userdata, msg)

        paho.on_message = on_message


def reraise_if_cancelling() -> None:
    """aiomqtt's `__aexit__` waits for the broker's goodbye and, when that times out, raises
    MqttError in place of the CancelledError that started the exit. A reconnect loop that
    caught it would run on after its task was cancelled (seen as a hang at shutdown), so a
    task being cancelled stops here instead."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


__all__ = ["Connection", "Message", "reraise_if_cancelling"]
