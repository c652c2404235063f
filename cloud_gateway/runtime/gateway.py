"""The gateway process: a thin seam over its parts (`runtime/build.py`) that opens the
database and the keys, starts the loops and the HTTP server, and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.audit import import_audit
from cloud_gateway.db.backend import Backend, Clock, Session
from cloud_gateway.db.open import open_backend
from cloud_gateway.errors import GatewayError
from cloud_gateway.registry.service import ModelRegistry
from cloud_gateway.runtime.build import LINK_LOOP, Parts, build
from cloud_gateway.security import keys_ring
from cloud_gateway.security.live import LiveKeys
from daemonkit.supervisor import Supervisor
from mqttlink.errors import MqttLinkError
from protocol.ids import utcnow
from protocol.signing import SigningKey

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0
DRAIN_S = 10.0
"""A drain (SIGTERM) takes at most this long before the loops are stopped anyway."""


class Gateway:
    """`async with Gateway(settings) as gw:` runs everything until the block ends."""

    def __init__(self, settings: GatewaySettings, *, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.http_port: int | None = None
        self.trust_path: Path = settings.data_dir / "trust.json"
        self._parts: Parts | None = None

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            raise GatewayError("the gateway is not started")
        return self._parts

    @property
    def signer(self) -> SigningKey:
        return self.parts.signer

    @property
    def db(self) -> Backend[Session]:
        return self.parts.db

    @property
    def campaigns(self) -> CampaignService:
        return self.parts.campaigns

    @property
    def models(self) -> ModelRegistry:
        return self.parts.models

    @property
    def loops(self) -> Supervisor:
        return self.parts.loops

    @property
    def link_connected(self) -> bool:
        return self._parts is not None and self._parts.link.connected.is_set()

    def gauges(self) -> dict[str, int]:
        """How full the uplink's queues are now (see `runtime/health.Health.gauges`)."""
        return self.parts.health.gauges()

    async def readiness(self) -> dict[str, Any]:
        """`/readyz`'s answer (see `runtime/health.Health.readiness`)."""
        return await self.parts.health.readiness()

    async def wait_connected(self) -> None:
        """Return once the MQTT session is up (subscribed); wrap in a timeout."""
        await self.parts.link.connected.wait()

    async def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        await self.parts.outlet.publish(topic, payload, retain)

    async def __aenter__(self) -> Gateway:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def _start(self) -> None:
        s = self.settings
        keys = await asyncio.to_thread(LiveKeys.load, s.data_dir, s.topic_root)
        self.trust_path = keys.trust_path
        backend = await open_backend(s, self.clock).open()
        try:
            # the key ring's changes, made offline by `edgemart keys`, join the audit log
            entries = await asyncio.to_thread(keys_ring.audit_entries, s.data_dir)
            if entries:
                await backend.call(import_audit, entries)
            parts = build(s, clock=self.clock, backend=backend, keys=keys, counters=self.counters)
        except BaseException:
            await backend.close()
            raise
        self._parts = parts
        for name, factory in parts.loop_table():
            parts.loops.start(name, factory)
        try:
            await asyncio.wait_for(parts.link.connected.wait(), s.connect_timeout_s)
        except TimeoutError:
            log.warning("no MQTT session to %s yet; still trying in the background", s.broker)
        self.http_port = await parts.http.start(s.http_host, s.http_port)
        parts.worker.http_port = self.http_port
        log.info(
            "gateway %s: HTTP on %s:%s, MQTT %s, data in %s",
            parts.signer.kid,
            s.http_host,
            self.http_port,
            s.broker,
            s.data_dir,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        """Stop HTTP, drain (`drain`), stop the loops (the link last), close the DB."""
        parts, self._parts = self._parts, None
        if parts is not None:
            await parts.http.stop()
            try:
                await asyncio.wait_for(drain(parts), DRAIN_S)
            except TimeoutError:
                log.warning("the drain took over %.0fs; stopping anyway", DRAIN_S)
            await parts.hooks.stop()
            # the link last: its before_disconnect hook flushes pending acks
            await parts.loops.stop(last=(LINK_LOOP,), last_timeout_s=SHUTDOWN_FLUSH_S)
            await parts.db.close()
        log.info("gateway stopped")


async def drain(parts: Parts) -> None:
    """Leave the fleet gracefully: stop taking uplink, hand on what the broker already gave,
    finish the commits in progress and those waiting, send their acks, release the lease and
    leave the registry. Each step is tried; a failed one is logged and the next goes on (what
    is not acked is sent again by its device, to another worker)."""
    link, ingestor = parts.link, parts.ingestor
    try:
        await link.stop_uplink()
    except MqttLinkError as exc:
        log.warning("drain: could not unsubscribe (%s)", exc)
    # polled: the queue is the MQTT client's, it has no event to await
    while link.connected.is_set() and link.queued_messages:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # the link's consumer hands them to the ingestor
    try:
        await ingestor.commit_waiting()
    except GatewayError as exc:
        log.warning("drain: commits failed (%s); their batches come again", exc)
    await parts.acks.flush()
    try:
        await parts.worker.leave()
    except GatewayError as exc:
        log.warning("drain: could not leave the registry (%s)", exc)
    log.info("worker %s drained", parts.worker.id)


async def run_gateway(
    settings: GatewaySettings, on_ready: Callable[[Gateway], None] | None = None
) -> None:
    """Run until cancelled, SIGTERM or SIGINT; then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with Gateway(settings) as gw:
            log.info("gateway ready on http://%s:%s", settings.http_host, gw.http_port)
            if on_ready is not None:
                on_ready(gw)
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
