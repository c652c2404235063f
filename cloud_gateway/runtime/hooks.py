"""How the parts meet at the MQTT link: publishing through it, the device events it brings in,
and what runs when its session comes up or goes down."""

from __future__ import annotations

import asyncio
import logging

from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.devices.erasure import DeviceErasure
from cloud_gateway.errors import LinkDown
from cloud_gateway.ingest.service import AckBatcher, Ingestor
from cloud_gateway.registry.service import ModelRegistry
from cloud_gateway.runtime.link import MqttLink
from cloud_gateway.security.keys import signed_key_list
from protocol import codec
from protocol.envelopes import ModelUpdateReport
from protocol.signing import Signer
from protocol.topics import Topics

log = logging.getLogger(__name__)

KEY_LIST_VERSION = 1


class Outlet:
    """Publishing through the link. The link is made after the parts that publish (it hands
    its messages to the ingestor, whose acks go out through it), so it is bound here once,
    by the composition root, before anything runs."""

    def __init__(self) -> None:
        self._link: MqttLink | None = None

    def bind(self, link: MqttLink) -> None:
        if self._link is not None:
            raise RuntimeError("the outlet is bound once")
        self._link = link

    def _bound(self) -> MqttLink:
        if self._link is None:
            raise LinkDown("the gateway is not started")
        return self._link

    async def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        await self._bound().publish(topic, payload, retain)

    def send_nowait(self, topic: str, payload: bytes) -> None:
        self._bound().publish_nowait(topic, payload)


class DeviceEvents:
    """What ingest reports of a device, handed to the parts that care: receipts and births to
    campaign delivery and erasure, model health reports to the registry."""

    def __init__(
        self, campaigns: CampaignService, erasure: DeviceErasure, models: ModelRegistry
    ) -> None:
        self._campaigns = campaigns
        self._erasure = erasure
        self._models = models

    async def on_receipts(self, device_id: str, ids: list[str]) -> None:
        await self._campaigns.delivery.on_receipts(device_id, ids)
        await self._erasure.on_receipts(device_id, ids)

    async def on_birth(self, device_id: str) -> None:
        await self._campaigns.delivery.on_birth(device_id)
        await self._erasure.on_birth(device_id)

    async def on_model_report(self, device_id: str, report: ModelUpdateReport) -> None:
        await self._models.record_health(device_id, report)


class SessionHooks:
    """Run by the link: after each (re)connect, the signed key list and the catalogs owed;
    before a clean disconnect, the waiting batches committed and their acks sent."""

    def __init__(
        self,
        *,
        topics: Topics,
        signer: Signer,
        outlet: Outlet,
        campaigns: CampaignService,
        ingestor: Ingestor,
        acks: AckBatcher,
    ) -> None:
        self._topics = topics
        self._signer = signer
        self._outlet = outlet
        self._campaigns = campaigns
        self._ingestor = ingestor
        self._acks = acks
        self._tasks: list[asyncio.Task[None]] = []
        """One-shot catalog retries (the loops are the supervisor's)."""

    async def on_connected(self) -> None:
        key_list = signed_key_list(self._signer, KEY_LIST_VERSION)
        await self._outlet.publish(self._topics.keys(), codec.encode_dict(key_list), True)
        self._campaigns.poke()  # pushes owed by changes a crash or an outage left
        if self._campaigns.dirty:
            retry = self._campaigns.rebuild(set(self._campaigns.dirty))
            self._tasks.append(asyncio.create_task(retry, name="gateway-catalog-retry"))

    async def before_disconnect(self) -> None:
        await self._ingestor.commit_waiting()
        await self._acks.flush()

    async def stop(self) -> None:
        """Cancel the catalog retries still running."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
