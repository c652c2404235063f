"""Clearing what a QA run left retained at a broker it does not own: every retained message
under the run's own topic root gets an empty retained payload, which deletes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiomqtt

from protocol.broker_url import BrokerUrl, parse_broker_url
from protocol.ids import new_id

log = logging.getLogger(__name__)


def _client(url: BrokerUrl, job: str) -> aiomqtt.Client:
    """A short-lived client of the QA run's own, named for its job."""
    return aiomqtt.Client(
        url.host,
        url.port,
        identifier=f"edgemart-qa-{job}-{new_id()[-12:]}",
        username=url.username,
        password=url.password,
    )


async def retained_topics(broker: str, root: str, quiet_s: float = 0.5) -> list[str]:
    """The topics under `root` that hold a retained message now: what a new subscriber to
    `root/#` is handed, collected until nothing arrives for `quiet_s` (at most 10 s)."""
    url = parse_broker_url(broker)
    found: set[str] = set()
    async with _client(url, "sweep") as client:
        await client.subscribe(f"{root}/#", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                while True:
                    try:
                        async with asyncio.timeout(quiet_s):
                            message = await anext(aiter(client.messages))
                    except TimeoutError:
                        break
                    if message.retain and message.payload:
                        found.add(str(message.topic))
    return sorted(found)


async def clear_retained(broker: str, root: str) -> list[str]:
    """Delete every retained message under `root` (the run's own); the topics cleared."""
    if root.startswith(("+", "#")) or "#" in root or "+" in root:
        raise ValueError(f"topic root {root!r} has a wildcard")
    topics = await retained_topics(broker, root)
    if not topics:
        return []
    url = parse_broker_url(broker)
    async with _client(url, "clear") as client:
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)
    log.info("cleared %d retained messages under %s", len(topics), root)
    return topics
