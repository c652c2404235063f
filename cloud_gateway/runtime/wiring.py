"""What the gateway's services are built on: one store, one signer, the topics, one publisher
and the counters, made once by the gateway process (`Gateway._start`) and shared by all."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cloud_gateway.db.backend import Backend, Session
from protocol.signing import SigningKey
from protocol.topics import Topics

Publish = Callable[[str, bytes, bool], Awaitable[None]]
"""publish(topic, payload, retain) at QoS 1."""


@dataclass(frozen=True, slots=True)
class Wiring:
    db: Backend[Session]
    signer: SigningKey
    topics: Topics
    publish: Publish
    counters: Counter[str]


class Service:
    """Base of the services that store, sign, send and count (campaigns, delivery, claims,
    erasure, models): the wiring's parts as the attributes their methods use."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self._db = wiring.db
        self._signer = wiring.signer
        self._topics = wiring.topics
        self._publish = wiring.publish
        self._counters = wiring.counters
