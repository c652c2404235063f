"""Keeping one MQTT session up: an explicit state machine with capped, jittered backoff.

    idle -> connecting -> connected -> backing off -> connecting -> ...   (cancel: closed)

A link supplies what is its own as two coroutines: `setup(conn)` runs once the broker has
accepted the session and before the link says it is connected (the agent publishes its birth
and subscribes; the gateway subscribes), `serve(conn)` runs while it is connected and returns
or raises when the session ends (both consume messages). The machine owns the rest: making a
fresh `Connection` per attempt, the `connected` event (cleared the moment the session ends,
not when a reader next looks), the backoff (reset once connected), and turning every adapter
error into one retry. Learned from aioesphomeapi's `reconnect_logic.py`.

With several brokers (the nodes of one cluster; a `Rotation`), a failed attempt moves to the
next broker at once and the backoff is taken only after a full round of them failed; the
`connect()` callable makes the connection for `rotation.current`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum

from mqttlink.backoff import Backoff
from mqttlink.connection import Connection, reraise_if_cancelling
from mqttlink.errors import MqttLinkError, SessionLost
from mqttlink.rotation import Rotation

log = logging.getLogger(__name__)


class LinkState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    CLOSED = "closed"


Step = Callable[[Connection], Awaitable[None]]


class Reconnector:
    """Runs `connect() -> setup -> serve` again and again until cancelled.

    `on_up(conn)` is told of each session once it is connected, `on_down(error, delay)` of each
    failure with the delay before the next attempt (for the link's logs and counters);
    `watch(callback)` sees every state change (tests walk the machine with it). `rotation`
    says which broker `connect()` is to use (one broker when not given); a session counts as
    having held once it was up for `stable_s` seconds.
    """

    def __init__(
        self,
        connect: Callable[[], Connection],
        *,
        setup: Step,
        serve: Step,
        backoff: Backoff | None = None,
        on_up: Callable[[Connection], None] | None = None,
        on_down: Callable[[MqttLinkError, float], None] | None = None,
        rotation: Rotation | None = None,
        stable_s: float = 1.0,
    ) -> None:
        self._connect = connect
        self._setup = setup
        self._serve = serve
        self.backoff = backoff or Backoff()
        self._on_up = on_up
        self._on_down = on_down
        self._watchers: list[Callable[[LinkState], None]] = []
        self.state = LinkState.IDLE
        self.connected = asyncio.Event()
        self.connection: Connection | None = None
        """The session that is up, else None."""
        self.connects = 0
        self.rotation = rotation or Rotation()
        self._stable_s = stable_s
        self._up_at: float | None = None

    def watch(self, callback: Callable[[LinkState], None]) -> None:
        self._watchers.append(callback)

    def _enter(self, state: LinkState) -> None:
        if state is self.state:
            return
        self.state = state
        for callback in self._watchers:
            callback(state)

    async def run(self) -> None:
        """Connect, serve, back off, again; forever until cancelled (then closed)."""
        try:
            while True:
                error = await self._attempt()
                if self._held():
                    self.rotation.held()
                delay = self.backoff.next() if self.rotation.failed() else 0.0
                self._enter(LinkState.BACKING_OFF)
                if self._on_down is not None:
                    self._on_down(error, delay)
                if delay:
                    await asyncio.sleep(delay)
        finally:
            self.connection = None
            self.connected.clear()
            self._enter(LinkState.CLOSED)

    async def _attempt(self) -> MqttLinkError:
        """One session from connect to its end; what ended it."""
        self._enter(LinkState.CONNECTING)
        conn = self._connect()
        try:
            async with conn:
                await self._setup(conn)
                self.connection = conn
                self.connects += 1
                self.backoff.reset()
                self.connected.set()
                self._up_at = asyncio.get_running_loop().time()
                self._enter(LinkState.CONNECTED)
                conn.on_lost(self._lost)
                if self._on_up is not None:
                    self._on_up(conn)
                await self._serve(conn)
            return SessionLost("the link stopped serving the session")
        except MqttLinkError as exc:
            reraise_if_cancelling()
            return exc
        finally:
            self.connection = None
            self.connected.clear()

    def _held(self) -> bool:
        """Whether the session that just ended (if one was up) lasted `stable_s`."""
        up_at, self._up_at = self._up_at, None
        return up_at is not None and asyncio.get_running_loop().time() - up_at >= self._stable_s

    def _lost(self) -> None:
        """The session ended: down at once, before `serve` notices."""
        self.connected.clear()
        if self.state is LinkState.CONNECTED:
            self._enter(LinkState.BACKING_OFF)
