"""Session end, known at once, and a publish that fails as soon as the session ends.

aiomqtt (2.x) waits for a QoS 1 PUBACK until its timeout even after paho has seen the
connection drop, so a publisher learns of a dead broker only seconds later. `publish_acked`
fails as soon as the session ends instead (SessionEnded); the message was not acknowledged,
so the caller sends it again after reconnecting, as after any failed publish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiomqtt

from mqttlink.errors import PublishFailed, SessionEnded


def session_lost(client: aiomqtt.Client) -> asyncio.Future[None]:
    """aiomqtt's future that completes when the connected session ends. It is replaced on
    each connect: read it after `__aenter__`."""
    return client._disconnected  # aiomqtt 2.x keeps it private; its MessagesIterator reads it


def on_session_lost(client: aiomqtt.Client, callback: Callable[[], object] | None) -> None:
    """Call `callback()` once, from the event loop, when this session ends. Either way the
    future's exception is retrieved, so asyncio does not log "Future exception was never
    retrieved" for a session that failed before anyone read it: call this with None right
    after making the client too (a failed connect ends a session nobody awaits)."""

    def done(lost: asyncio.Future[None]) -> None:
        if not lost.cancelled():
            lost.exception()
        if callback is not None:
            callback()

    session_lost(client).add_done_callback(done)


async def publish_acked(
    client: aiomqtt.Client,
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    retain: bool = False,
    timeout: float | None = None,
) -> None:
    """`client.publish`, waiting for the PUBACK (QoS 1) or until the session ends, whichever
    comes first: SessionEnded in the second case, PublishFailed on a timeout or refusal."""
    sending = asyncio.ensure_future(
        client.publish(topic, payload, qos=qos, retain=retain, timeout=timeout)
    )
    try:
        await asyncio.wait((sending, session_lost(client)), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not sending.done():
            sending.cancel()  # the session ended, or the caller was cancelled
    if not sending.done():
        raise SessionEnded(topic)
    try:
        sending.result()
    except aiomqtt.MqttError as exc:
        raise PublishFailed(topic, str(exc)) from exc
