"""The gateway's composition root: `build` makes every part in order, collaborators by name.

Nothing here runs: `Gateway` (the seam) opens the database and loads the keys before, and
starts the loops (`Parts.loop_table`) and the HTTP server after. The one late binding is the
outlet (see `runtime/hooks.Outlet`): the link needs the ingestor, whose acks publish through
the link.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from cloud_gateway.api.app import HttpServer, build_app
from cloud_gateway.api.context import ApiContext
from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.campaigns.waves import WaveDesk
from cloud_gateway.claims.desk import ClaimDesk
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.audit import import_audit
from cloud_gateway.db.backend import Backend, Clock, Session
from cloud_gateway.devices.erasure import DeviceErasure
from cloud_gateway.errors import GatewayError
from cloud_gateway.households.service import HouseholdDesk
from cloud_gateway.ingest.retention import RetentionPolicy, run_retention
from cloud_gateway.ingest.service import AckBatcher, Ingestor
from cloud_gateway.members.service import MemberDesk
from cloud_gateway.provisioning.service import Provisioner
from cloud_gateway.registry.service import ModelRegistry
from cloud_gateway.runtime.fleet import Lease, Worker, new_worker_id, while_holding
from cloud_gateway.runtime.health import Health
from cloud_gateway.runtime.hooks import DeviceEvents, Outlet, SessionHooks
from cloud_gateway.runtime.link import Hook, MqttLink, OnMessage
from cloud_gateway.runtime.scheduler import run_catalog_refresh, run_scheduler
from cloud_gateway.runtime.wiring import Wiring
from cloud_gateway.security import keys_ring
from cloud_gateway.security.auth import TokenVerifier
from cloud_gateway.security.keys import KeyMaterial
from cloud_gateway.security.live import KeyChange, LiveKeys
from cloud_gateway.security.shared import SharedKeys
from cloud_gateway.social.desk import SocialDesk
from daemonkit.supervisor import LoopFactory, Supervisor
from protocol.signing import SigningKey

LINK_LOOP = "gateway-mqtt"
log = logging.getLogger(__name__)


class MakeLink(Protocol):
    """What makes the MQTT link (`MqttLink` itself in production)."""

    def __call__(
        self,
        settings: GatewaySettings,
        on_message: OnMessage,
        *,
        on_connected: Hook,
        before_disconnect: Hook,
        counters: Counter[str],
    ) -> MqttLink: ...


@dataclass(frozen=True, slots=True)
class Parts:
    """Every part of a gateway, made once by `build`; none is missing."""

    settings: GatewaySettings
    clock: Clock
    counters: Counter[str]
    signer: SigningKey
    keys: LiveKeys
    """The keys signed with now, switched when `DATA_DIR/keys/` changes (`gateway-keys`)."""
    shared_keys: SharedKeys
    """The key ring shared with the other workers of the database."""
    trust_path: Path
    db: Backend[Session]
    outlet: Outlet
    acks: AckBatcher
    campaigns: CampaignService
    claims: ClaimDesk
    members: MemberDesk
    waves: WaveDesk
    erasure: DeviceErasure
    models: ModelRegistry
    ingestor: Ingestor
    hooks: SessionHooks
    link: MqttLink
    loops: Supervisor
    worker: Worker
    """This process in the worker registry, with the lease of the once-only loops."""
    health: Health
    http: HttpServer
    """The API, not yet listening."""
    social: SocialDesk
    """Group buys and price cuts (issue 19)."""

    async def keys_changed(self, change: KeyChange) -> None:
        """`edgemart keys` changed the keys under the running gateway: its audit entries join
        the log, and the new keys go out (`SessionHooks.on_keys_changed`)."""
        entries = await asyncio.to_thread(keys_ring.audit_entries, self.settings.data_dir)
        try:
            await self.db.call(import_audit, entries)
        except GatewayError as exc:
            log.warning("key audit entries not imported yet (%s): at the next change", exc)
        await self.hooks.on_keys_changed(change)

    def once(self, name: str, factory: LoopFactory) -> tuple[str, LoopFactory]:
        """A loop whose work must happen once in the fleet: run only while this worker holds
        the lease (`runtime/fleet.py`)."""
        return name, functools.partial(while_holding, self.worker.lease, name, factory)

    def loop_table(self) -> tuple[tuple[str, LoopFactory], ...]:
        """The gateway's loops by name, in the order they start (the link after its consumers);
        the scheduler, the catalog refresh, the command re-sends and retention only on the
        lease holder."""
        s, campaigns = self.settings, self.campaigns
        return (
            ("gateway-heartbeat", self.worker.run),
            ("gateway-lease", self.worker.lease.run),
            ("gateway-ingest-commit", self.ingestor.run),
            ("gateway-acks", self.acks.run),
            (
                "gateway-keys",
                functools.partial(
                    self.keys.watch,
                    s.keys_watch_s,
                    self.keys_changed,
                    self.counters,
                    self.shared_keys.sync,
                ),
            ),
            (LINK_LOOP, self.link.run),
            self.once(
                "gateway-catalog-refresh",
                functools.partial(
                    run_catalog_refresh, campaigns, self.link.connected, s.catalog_refresh_s
                ),
            ),
            ("gateway-claims", self.claims.run),
            ("gateway-members", self.members.run),
            ("gateway-waves", self.waves.run),
            self.once(
                "gateway-timestamp",
                functools.partial(self.hooks.run_timestamps, s.timestamp_interval_s),
            ),
            ("gateway-campaign-settle", campaigns.run_settler),
            self.once(
                "gateway-scheduler",
                functools.partial(run_scheduler, campaigns, s.scheduler_tick_s, s.resend_after_s),
            ),
            self.once(
                "gateway-erasure",
                functools.partial(self.erasure.run, s.scheduler_tick_s, s.resend_after_s),
            ),
            self.once(
                "gateway-experiments",
                functools.partial(self.models.experiments.run, s.experiment_tick_s),
            ),
            self.once(
                "gateway-retention",
                functools.partial(
                    run_retention, self.db, RetentionPolicy.of(s), s.retention_interval_s
                ),
            ),
            ("gateway-social", self.social.run),
            self.once(
                "gateway-social-closer",
                functools.partial(self.social.run_closer, min(s.scheduler_tick_s, 1.0)),
            ),
        )


def build(
    settings: GatewaySettings,
    *,
    clock: Clock,
    backend: Backend[Session],
    keys: LiveKeys | KeyMaterial,
    link: MakeLink = MqttLink,
    counters: Counter[str] | None = None,
) -> Parts:
    """Make every part of the gateway over an open `backend` and loaded `keys` (no I/O);
    `counters` are the gateway's (a new set by default)."""
    s = settings
    counters = counters if counters is not None else Counter()
    if isinstance(keys, KeyMaterial):
        keys = LiveKeys(s.data_dir, s.topic_root, keys)
    outlet = Outlet()
    acks = AckBatcher(s.topics, outlet.send_nowait, counters, s.ack_delay_ms / 1000, signer=keys)
    wiring = Wiring(backend, keys, s.topics, outlet.publish, counters)
    campaigns = CampaignService(wiring, bundle_ttl=timedelta(seconds=s.bundle_ttl_s))
    waves = WaveDesk(wiring, campaigns, stamp=lambda: hooks.publish_timestamp())  # noqa: PLW0108 - `hooks` is made below: bound late

    def sold_out() -> None:
        campaigns.poke()  # catalogs and bundles carry stock 0
        waves.poke()  # a wave's offer: the cohort's signed notice within the second

    claims = ClaimDesk(wiring, batch_max=s.claim_batch_max, on_sold_out=sold_out)
    erasure = DeviceErasure(wiring)
    members = MemberDesk(wiring)
    models = ModelRegistry(
        wiring,
        models_dir=s.data_dir / "models",
        halt_fraction=s.model_halt_fraction,
        halt_min_devices=s.model_halt_min_devices,
    )
    events = DeviceEvents(campaigns, erasure, models, members)
    ingestor = Ingestor(
        s.topics,
        backend,
        acks=acks,
        counters=counters,
        max_compressed=s.max_payload_bytes,
        max_decompressed=s.max_decompressed_bytes,
        submit_claim=claims.submit,
        on_receipts=events.on_receipts,
        on_birth=events.on_birth,
        on_model_report=events.on_model_report,
        on_facts=campaigns.delivery.note_facts,
        on_members=members.owe,
    )
    social = SocialDesk(wiring, batch_max=s.claim_batch_max, clock=clock)

    async def on_message(topic: str, payload: bytes) -> None:
        # `up/social` goes to the social desk; everything else to the ingestor
        if not await social.handle(topic, payload):
            await ingestor.feed(topic, payload)

    hooks = SessionHooks(
        topics=s.topics,
        keys=keys,
        outlet=outlet,
        campaigns=campaigns,
        ingestor=ingestor,
        acks=acks,
        timestamp_ttl=timedelta(seconds=s.timestamp_ttl_s),
    )
    mqtt = link(
        s,
        on_message,  # batches are queued; `ingestor.run` commits them in groups
        on_connected=hooks.on_connected,
        before_disconnect=hooks.before_disconnect,
        counters=counters,
    )
    outlet.bind(mqtt)

    def restarted(name: str) -> None:
        counters["loop_restarts"] += 1
        counters[f"loop_restarts_{name}"] += 1

    loops = Supervisor(on_restart=restarted)
    worker = Worker(backend, Lease(backend, new_worker_id()))
    health = Health(link=mqtt, ingestor=ingestor, db=backend, loops=loops)
    api = ApiContext(
        campaigns=campaigns,
        db=backend,
        verifier=TokenVerifier(backend, s.token_cache_s),
        erasure=erasure,
        models=models,
        counters=counters,
        registry=CollectorRegistry(auto_describe=True),
        started=time.monotonic(),
        gauges=health.gauges,
        readiness=health.readiness,
        provisioner=Provisioner(backend, s.data_dir, keys.trust_path, s.topic_root, counters),
        households=HouseholdDesk(backend, keys, clock, counters),
        members=members,
        waves=waves,
    )
    return Parts(
        settings=s,
        clock=clock,
        counters=counters,
        signer=keys,
        keys=keys,
        shared_keys=SharedKeys(backend, s.data_dir, worker.id, counters),
        trust_path=keys.trust_path,
        db=backend,
        outlet=outlet,
        acks=acks,
        campaigns=campaigns,
        claims=claims,
        members=members,
        waves=waves,
        erasure=erasure,
        models=models,
        ingestor=ingestor,
        hooks=hooks,
        link=mqtt,
        loops=loops,
        worker=worker,
        health=health,
        http=HttpServer(build_app(api, s.max_http_body_bytes)),
        social=social,
    )
