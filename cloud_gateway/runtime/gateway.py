"""The gateway process: wires keys, store, MQTT link, ingest, campaigns and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from cloud_gateway.api.app import ApiContext, build_app
from cloud_gateway.api.models import add_model_routes
from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.claims.desk import ClaimDesk
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.open import open_backend
from cloud_gateway.devices.erasure import DeviceErasure
from cloud_gateway.errors import GatewayError, LinkDown
from cloud_gateway.ingest.retention import RetentionPolicy, run_retention  # issue 12 (H11)
from cloud_gateway.ingest.service import AckBatcher, Ingestor
from cloud_gateway.registry.service import ModelRegistry
from cloud_gateway.runtime.link import MqttLink
from cloud_gateway.runtime.scheduler import run_scheduler
from cloud_gateway.runtime.tasks import Supervisor
from cloud_gateway.runtime.wiring import Wiring
from cloud_gateway.security.auth import TokenVerifier
from cloud_gateway.security.keys import load_or_create, signed_key_list
from protocol import codec
from protocol.envelopes import ModelUpdateReport
from protocol.signing import Signer

log = logging.getLogger(__name__)

KEY_LIST_VERSION = 1
SHUTDOWN_FLUSH_S = 5.0
READY_DB_TIMEOUT_S = 2.0
LINK_LOOP = "gateway-mqtt"


class Gateway:
    """`async with Gateway(settings) as gw:` runs everything until the block ends."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.counters: Counter[str] = Counter()
        self.http_port: int | None = None
        self.trust_path: Path = settings.data_dir / "trust.json"
        self._signer: Signer | None = None
        self._db: Backend[Session] | None = None
        self._link: MqttLink | None = None
        self._acks: AckBatcher | None = None
        self._ingestor: Ingestor | None = None
        self._campaigns: CampaignService | None = None
        self._erasure: DeviceErasure | None = None
        self.models: ModelRegistry | None = None
        self._runner: web.AppRunner | None = None
        self.loops = Supervisor()
        self._tasks: list[asyncio.Task[None]] = []
        """One-shot tasks (a catalog retry); the loops are `self.loops`'."""

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            raise GatewayError("the gateway is not started")
        return self._signer

    @property
    def db(self) -> Backend[Session]:
        if self._db is None:
            raise GatewayError("the gateway is not started")
        return self._db

    @property
    def campaigns(self) -> CampaignService:
        if self._campaigns is None:
            raise GatewayError("the gateway is not started")
        return self._campaigns

    @property
    def link_connected(self) -> bool:
        return self._link is not None and self._link.connected.is_set()

    def gauges(self) -> dict[str, int]:
        """How full the uplink's queues are now (`GET /v1/stats`, `/metrics`): messages and
        bytes the MQTT client holds for ingest, batches parsed and waiting for their commit."""
        link, ingestor = self._link, self._ingestor
        return {
            "uplink_queued_messages": link.queued_messages if link is not None else 0,
            "uplink_queued_bytes": link.queued_bytes if link is not None else 0,
            "ingest_waiting_batches": ingestor.waiting if ingestor is not None else 0,
        }

    async def readiness(self) -> dict[str, Any]:
        """`/readyz`: the broker link is up, the database takes a write (rolled back), every
        owned loop runs. `ready` is True only when all three hold; each check says why not."""
        broker = {"ok": self.link_connected}
        try:
            await asyncio.wait_for(self.db.check_writable(), READY_DB_TIMEOUT_S)
            database: dict[str, Any] = {"ok": True}
        except (GatewayError, TimeoutError) as exc:
            database = {"ok": False, "error": str(exc) or "timed out"}
        down = self.loops.down()
        loops = {"ok": not down, "down": down, "restarts": sum(self.loops.restarts.values())}
        checks = {"broker": broker, "database": database, "loops": loops}
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}

    async def wait_connected(self) -> None:
        """Return once the MQTT session is up (subscribed); wrap in a timeout."""
        if self._link is None:
            raise GatewayError("the gateway is not started")
        await self._link.connected.wait()

    async def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if self._link is None:
            raise LinkDown("the gateway is not started")
        await self._link.publish(topic, payload, retain)

    def _send_nowait(self, topic: str, payload: bytes) -> None:
        if self._link is None:
            raise LinkDown("the gateway is not started")
        self._link.publish_nowait(topic, payload)

    async def __aenter__(self) -> Gateway:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def _start(self) -> None:
        s = self.settings
        topics = s.topics
        keys = await asyncio.to_thread(load_or_create, s.data_dir, s.topic_root)
        self._signer, self.trust_path = keys.signer, keys.trust_path
        self._db = await open_backend(s).open()
        self._acks = AckBatcher(topics, self._send_nowait, self.counters, s.ack_delay_ms / 1000)
        wiring = Wiring(self._db, self._signer, topics, self._publish, self.counters)
        self._campaigns = CampaignService(wiring, bundle_ttl=timedelta(seconds=s.bundle_ttl_s))
        claims = ClaimDesk(wiring, batch_max=s.claim_batch_max, on_sold_out=self._campaigns.poke)
        ingestor = Ingestor(
            topics,
            self._db,
            acks=self._acks,
            counters=self.counters,
            max_compressed=s.max_payload_bytes,
            max_decompressed=s.max_decompressed_bytes,
            submit_claim=claims.submit,
            on_receipts=self._on_receipts,
            on_birth=self._on_birth,
            on_model_report=self._on_model_report,
            on_facts=self._campaigns.delivery.note_facts,
        )
        self._erasure = DeviceErasure(wiring)
        self._ingestor = ingestor
        self._link = MqttLink(
            s,
            ingestor.feed,  # batches are queued; `ingestor.run` commits them in groups
            on_connected=self._on_connected,
            before_disconnect=self._before_disconnect,
            counters=self.counters,
        )
        loops, campaigns, erasure = self.loops, self._campaigns, self._erasure
        loops.start("gateway-ingest-commit", ingestor.run)
        loops.start("gateway-acks", self._acks.run)
        loops.start(LINK_LOOP, self._link.run)
        loops.start("gateway-catalog-refresh", self._refresh_loop)
        loops.start("gateway-claims", claims.run)
        loops.start("gateway-campaign-settle", campaigns.run_settler)
        loops.start(
            "gateway-scheduler",
            lambda: run_scheduler(campaigns, s.scheduler_tick_s, s.resend_after_s),
        )
        loops.start("gateway-erasure", lambda: erasure.run(s.scheduler_tick_s, s.resend_after_s))
        db, keep = self._db, RetentionPolicy.of(s)  # issue 12 (H11): the retention loop
        loops.start("gateway-retention", lambda: run_retention(db, keep, s.retention_interval_s))
        try:
            await asyncio.wait_for(self._link.connected.wait(), s.connect_timeout_s)
        except TimeoutError:
            log.warning("no MQTT session to %s yet; still trying in the background", s.broker)
        ctx = ApiContext(
            campaigns=self._campaigns,
            db=self._db,
            verifier=TokenVerifier(self._db, s.token_cache_s),
            counters=self.counters,
            registry=CollectorRegistry(auto_describe=True),
            started=time.monotonic(),
            erasure=self._erasure,
            gauges=self.gauges,
            readiness=self.readiness,
        )
        app = build_app(ctx, s.max_http_body_bytes)
        self.models = ModelRegistry(  # issue 5: model registry and rollouts
            wiring,
            models_dir=s.data_dir / "models",
            halt_fraction=s.model_halt_fraction,
            halt_min_devices=s.model_halt_min_devices,
        )
        add_model_routes(app, self.models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.http_host, s.http_port)
        await site.start()
        self.http_port = self._bound_port(self._runner)
        log.info(
            "gateway %s: HTTP on %s:%s, MQTT %s, data in %s",
            self.signer.kid,
            s.http_host,
            self.http_port,
            s.broker,
            s.data_dir,
        )

    @staticmethod
    def _bound_port(runner: web.AppRunner) -> int:
        addresses = runner.addresses
        if not addresses:
            raise GatewayError("the HTTP server has no listening socket")
        port: int = addresses[0][1]
        return port

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)

    async def _before_disconnect(self) -> None:
        """On shutdown, with the session still up: commit what is queued, then send its acks."""
        if self._ingestor is not None:
            await self._ingestor.commit_waiting()
        if self._acks is not None:
            await self._acks.flush()

    async def _on_receipts(self, device_id: str, ids: list[str]) -> None:
        await self.campaigns.delivery.on_receipts(device_id, ids)
        if self._erasure is not None:
            await self._erasure.on_receipts(device_id, ids)

    async def _on_birth(self, device_id: str) -> None:
        await self.campaigns.delivery.on_birth(device_id)
        if self._erasure is not None:
            await self._erasure.on_birth(device_id)

    async def _on_model_report(self, device_id: str, report: ModelUpdateReport) -> None:
        if self.models is not None:  # reports before the registry starts wait for the next
            await self.models.record_health(device_id, report)

    async def _on_connected(self) -> None:
        """After each (re)connect: the signed key list, then catalogs that failed to go out."""
        await self._publish(
            self.settings.topics.keys(),
            codec.encode_dict(signed_key_list(self.signer, KEY_LIST_VERSION)),
            True,
        )
        if self._campaigns is not None:
            self._campaigns.poke()  # pushes owed by changes a crash or an outage left
            if self._campaigns.dirty:
                self._spawn(
                    self._campaigns.rebuild(set(self._campaigns.dirty)), "gateway-catalog-retry"
                )

    async def _refresh_loop(self) -> None:
        """Re-sign catalogs before devices drop them: at start, then every refresh period."""
        while True:
            await self.wait_connected()
            try:
                await self.campaigns.refresh_due()
            except GatewayError as exc:
                log.warning("catalog refresh failed: %s", exc)
            await asyncio.sleep(self.settings.catalog_refresh_s)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        """Stop HTTP, stop consuming (flushing acks while the session is up), close the DB."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        # the link last: its before_disconnect hook flushes pending acks
        await self.loops.stop(last=(LINK_LOOP,), last_timeout_s=SHUTDOWN_FLUSH_S)
        if self._db is not None:
            await self._db.close()
            self._db = None
        log.info("gateway stopped")


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
