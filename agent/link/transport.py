"""What the agent's parts need of the broker link: the `Transport` seam (`agent.link.session.Link`
is the MQTT one; a test can hand the composition root another, e.g. one that needs no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from agent.config import AgentSettings
from agent.link.session import Incoming
from agent.runtime.metrics import Metrics
from protocol.envelopes import State


class Transport(Protocol):
    """A session to the gateway: up/down, acked publish, the goodbye, and its own loop."""

    connected: asyncio.Event

    @property
    def state(self) -> str: ...

    @property
    def broker(self) -> str:
        """The broker it is on or trying now (no credentials), for the status."""
        ...

    async def run(self) -> None: ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None: ...

    async def say_goodbye(self) -> None: ...


class TransportFactory(Protocol):
    """Makes the transport with the callbacks it calls back into (as `Link` takes them)."""

    def __call__(
        self,
        settings: AgentSettings,
        *,
        birth: Callable[[], State],
        on_message: Callable[[Incoming], Awaitable[None]],
        on_connected: Callable[[], None],
        metrics: Metrics,
    ) -> Transport: ...
