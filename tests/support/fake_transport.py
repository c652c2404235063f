"""A transport that needs no broker: what the agent publishes is kept, what the gateway would
send is handed to the agent's router with `deliver`, and `up()`/`down()` move the link."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from agent.config import AgentSettings
from agent.errors import LinkDown
from agent.link.session import Incoming, LinkState
from agent.runtime.metrics import Metrics
from protocol.envelopes import State


class FakeTransport:
    """Implements `agent.link.transport.Transport`; starts down unless `connected=True`."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        birth: Callable[[], State],
        on_message: Callable[[Incoming], Awaitable[None]],
        on_connected: Callable[[], None],
        metrics: Metrics,
        start_up: bool = False,
    ) -> None:
        self.settings = settings
        self.birth = birth
        self.on_message = on_message
        self.on_connected = on_connected
        self.metrics = metrics
        self.connected = asyncio.Event()
        self.published: list[tuple[str, bytes, bool]] = []
        self._start_up = start_up

    @property
    def state(self) -> str:
        return LinkState.CONNECTED if self.connected.is_set() else LinkState.OFFLINE

    @property
    def broker(self) -> str:
        return "fake://"

    async def run(self) -> None:
        if self._start_up:
            self.up()
        await asyncio.Event().wait()  # a link runs until cancelled

    def up(self) -> None:
        self.connected.set()
        self.on_connected()

    def down(self) -> None:
        self.connected.clear()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        if not self.connected.is_set():
            raise LinkDown("not connected")
        self.published.append((topic, payload, retain))

    async def say_goodbye(self) -> None:
        return None

    async def deliver(self, kind: str, payload: bytes, subject: str | None = None) -> None:
        """A downlink message of `kind` for this device, as the MQTT link would hand it on."""
        who = subject if subject is not None else self.settings.device_id
        await self.on_message(Incoming(kind, who, f"fake/{kind}", payload, False))


class FakeTransports:
    """A `TransportFactory`: makes `FakeTransport`s (kept in `made`) for a test to drive."""

    def __init__(self, *, start_up: bool = False) -> None:
        self.made: list[FakeTransport] = []
        self._start_up = start_up

    def __call__(self, settings: AgentSettings, **callbacks: Any) -> FakeTransport:
        """Takes what `Link` takes: `birth`, `on_message`, `on_connected`, `metrics`."""
        transport = FakeTransport(settings, **callbacks, start_up=self._start_up)
        self.made.append(transport)
        return transport

    @property
    def last(self) -> FakeTransport:
        return self.made[-1]
