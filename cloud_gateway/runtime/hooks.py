"""How the parts meet at the MQTT link: publishing through it, the device events it brings in,
and what runs when its session comes up or goes down."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.devices.erasure import DeviceErasure
from cloud_gateway.errors import GatewayError, LinkDown
from cloud_gateway.ingest.service import AckBatcher, Ingestor
from cloud_gateway.members.service import MemberDesk
from cloud_gateway.registry.service import ModelRegistry
from cloud_gateway.runtime.link import MqttLink
from cloud_gateway.security.live import KeyChange, LiveKeys
from protocol import codec
from protocol.envelopes import ModelUpdateReport, Timestamp
from protocol.ids import utcnow
from protocol.topics import Topics

log = logging.getLogger(__name__)


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
        self,
        campaigns: CampaignService,
        erasure: DeviceErasure,
        models: ModelRegistry,
        members: MemberDesk | None = None,
    ) -> None:
        self._campaigns = campaigns
        self._erasure = erasure
        self._models = models
        self._members = members

    async def on_receipts(self, device_id: str, ids: list[str]) -> None:
        await self._campaigns.delivery.on_receipts(device_id, ids)
        await self._erasure.on_receipts(device_id, ids)

    async def on_birth(self, device_id: str) -> None:
        await self._campaigns.delivery.on_birth(device_id)
        await self._erasure.on_birth(device_id)
        if self._members is not None:
            await self._members.on_birth(device_id)

    async def on_model_report(self, device_id: str, report: ModelUpdateReport) -> None:
        await self._models.record_health(device_id, report)


class SessionHooks:
    """Run by the link: after each (re)connect, the signed key list, a fresh timestamp and the
    catalogs owed; before a clean disconnect, the waiting batches committed and their acks
    sent. `run_timestamps` issues the timestamp again every interval (issue 14)."""

    def __init__(
        self,
        *,
        topics: Topics,
        keys: LiveKeys,
        outlet: Outlet,
        campaigns: CampaignService,
        ingestor: Ingestor,
        acks: AckBatcher,
        timestamp_ttl: timedelta,
    ) -> None:
        self._topics = topics
        self._keys = keys
        self._timestamp_ttl = timestamp_ttl
        self._outlet = outlet
        self._campaigns = campaigns
        self._ingestor = ingestor
        self._acks = acks
        self._resigned = keys.material.key_list is None
        """Whether the catalogs were signed again by this process's key (with a key ring)."""
        self._tasks: list[asyncio.Task[None]] = []
        """One-shot catalog retries (the loops are the supervisor's)."""
        self._revoked_pending: set[str] = set()
        """Kids revoked while running, whose device bundles are still to re-sign."""

    def timestamp(self) -> dict[str, Any]:
        """A signed `Timestamp`: short-lived, its version the clock in milliseconds."""
        now = utcnow()
        stamp = Timestamp(
            version=max(1, int(now.timestamp() * 1000)),
            issued_at=now,
            expires_at=now + self._timestamp_ttl,
            keys_version=self._keys.keys_version,
        )
        return self._keys.sign(stamp.to_wire())

    async def publish_timestamp(self) -> None:
        await self._outlet.publish(self._topics.timestamp(), codec.dumps(self.timestamp()), True)

    async def run_timestamps(self, interval_s: float) -> None:
        """Issue the timestamp again every `interval_s` (a loop of the lease holder)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.publish_timestamp()
            except GatewayError as exc:  # the link is down: the next connect publishes one
                log.debug("timestamp not published: %s", exc)

    async def on_connected(self) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        key_list = self._keys.published_key_list()
        await self._outlet.publish(self._topics.keys(), codec.encode_dict(key_list), True)
        await self.publish_timestamp()
        self._campaigns.poke()  # pushes owed by changes a crash or an outage left
        if not self._resigned:
            # the key may have changed since the catalogs were signed (a rotation, a
            # revocation): sign them again with this one, once per start
            self._resigned = True
            retry = self._campaigns.republish_all()
            self._tasks.append(asyncio.create_task(retry, name="gateway-catalog-resign"))
            resend = self._resend_revoked()
            self._tasks.append(asyncio.create_task(resend, name="gateway-device-resign"))
        elif self._campaigns.dirty:
            retry = self._campaigns.rebuild(set(self._campaigns.dirty))
            self._tasks.append(asyncio.create_task(retry, name="gateway-catalog-retry"))

    async def on_keys_changed(self, change: KeyChange) -> None:
        """The keys changed under the running gateway (`LiveKeys.watch`): the new list and a
        timestamp go out, the catalogs are signed again with the key now active and, after a
        revocation, the device bundles the revoked key signed are sent again, re-signed
        (devices dropped them). Down link: the next connect does it (`on_connected`)."""
        self._resigned = False
        self._revoked_pending |= change.revoked
        try:
            await self.on_connected()
        except GatewayError as exc:
            log.info("new keys published at the next connect: %s", exc)

    async def _resend_revoked(self) -> None:
        """Device bundles signed by a revoked key, signed again and sent (once per start and
        per revocation; the refreshed pushes are signed by the active key)."""
        revoked = self._revoked_pending | self._keys.revoked
        if revoked:
            sent = await self._campaigns.delivery.resign_revoked(revoked)
            if sent:
                log.info("re-signed %d device bundles signed by revoked keys", sent)
        self._revoked_pending = set()

    async def before_disconnect(self) -> None:
        await self._ingestor.commit_waiting()
        await self._acks.flush()

    async def stop(self) -> None:
        """Cancel the catalog retries still running."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
