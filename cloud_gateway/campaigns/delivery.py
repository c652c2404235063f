"""Device-addressed offer bundles: audience, variant and holdout per device, re-sent until receipt.

Used for campaigns no cohort can express (rules, tiers, device lists, profile x region, A/B
variants). Each selected device gets its own signed bundle on `dev/{id}/down/offers`; the
bundle is kept until the device's receipt (on its next uplink batch) and re-sent on each
of its births and periodically until then. Pausing or ending sends each holder a signed
bundle revoking the campaign's offers, delivered the same way.

Holders get a fresh bundle (current stock, new expiry) at half its lifetime, and when a
limited offer sells out. New reports from a device re-check its targeting on the next
scheduler tick: a device that now matches gets the campaign, one that no longer does gets
a revocation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from cloud_gateway.campaigns.model import Campaign, build_offers, needs_facts
from cloud_gateway.campaigns.targeting import DeviceFacts, selects
from cloud_gateway.db.campaigns import get_campaign, list_campaigns
from cloud_gateway.db.claims import stock_left
from cloud_gateway.db.devices import device_facts
from cloud_gateway.db.pushes import (
    DevicePush,
    add_device_pushes,
    apply_receipts,
    bundles_past_half_life,
    mark_sent,
    outstanding,
    pushed_devices,
    quarantine_push,
    signed_by,
)
from cloud_gateway.errors import GatewayError
from cloud_gateway.runtime.wiring import Service, Wiring
from protocol import codec
from protocol.assign import in_holdout, pick_variant
from protocol.envelopes import OfferBundle
from protocol.ids import new_id, utcnow

log = logging.getLogger(__name__)

PUBLISH_CONCURRENCY = 64
MAX_FACTS_DUE = 10_000
RECHECK_ONE_BY_ONE = 64  # beyond this many devices, one pass over every device's facts


def plan_device(campaign: Campaign, facts: DeviceFacts, now: datetime) -> tuple[str, bool] | None:
    """Pure: (variant, held out) for a device the campaign selects, None when it does not."""
    if not selects(campaign.targeting, campaign.cohorts, facts, now):
        return None
    variant = pick_variant(facts.device_id, campaign.id, campaign.weights)
    return variant, in_holdout(facts.device_id, campaign.id, campaign.holdout)


class DeviceDelivery(Service):
    """Plans, signs, records and sends per-device bundles; handles receipts and births."""

    def __init__(self, wiring: Wiring, *, bundle_ttl: timedelta) -> None:
        super().__init__(wiring)
        self._ttl = bundle_ttl
        self._birth_lock = asyncio.Lock()
        self._facts_due: set[str] = set()

    def _bundle(
        self,
        campaign: Campaign,
        device_id: str,
        plan: tuple[str, bool],
        now: datetime,
        stock: dict[str, int],
    ) -> DevicePush:
        variant, holdout = plan
        expiry = min(campaign.ends_at or now + self._ttl, now + self._ttl)
        offers = build_offers(campaign, now, expiry, variant=variant, stock=stock)
        bundle = OfferBundle(id=new_id(), issued_at=now, expires_at=expiry, offers=offers)
        return self._signed(campaign, device_id, bundle, "offers", variant=variant, holdout=holdout)

    async def launch(self, campaign: Campaign) -> int:
        """Push the campaign to every registered device it selects; returns the device count."""
        now = utcnow()
        facts = await self._db.call(device_facts)
        stock = await self._db.call(stock_left, campaign.id)
        pushes = []
        for f in facts:
            plan = plan_device(campaign, f, now)
            if plan is not None:
                pushes.append(self._bundle(campaign, f.device_id, plan, now, stock))
        await self._db.call(add_device_pushes, pushes, campaign.id)
        await self._send([(p.bundle_id, p.device_id, p.payload) for p in pushes])
        log.info("campaign %s pushed to %d devices", campaign.id, len(pushes))
        return len(pushes)

    def _revocation(self, campaign: Campaign, device_id: str, now: datetime) -> DevicePush:
        expiry = now + self._ttl
        bundle = OfferBundle(
            id=new_id(),
            issued_at=now,
            expires_at=expiry,
            offers=[],
            revokes=[o.id for o in campaign.offers],
        )
        return self._signed(campaign, device_id, bundle, "revoke")

    def _signed(
        self,
        campaign: Campaign,
        device_id: str,
        bundle: OfferBundle,
        kind: str,
        *,
        variant: str | None = None,
        holdout: bool = False,
    ) -> DevicePush:
        """The stored push of a bundle for one device, signed."""
        return DevicePush(
            bundle_id=bundle.id,
            device_id=device_id,
            campaign_id=campaign.id,
            variant=variant,
            holdout=holdout,
            kind=kind,
            offers=len(bundle.offers),
            payload=self._signer.sign(bundle.to_wire()),
            created_at=bundle.issued_at,
            expires_at=bundle.expires_at,
        )

    async def revoke(self, campaign: Campaign) -> int:
        """Withdraw the campaign's offers from every device that was sent them."""
        holders = await self._db.call(pushed_devices, campaign.id)
        now = utcnow()
        pushes = [self._revocation(campaign, d, now) for d in sorted(holders)]
        await self._db.call(add_device_pushes, pushes, campaign.id)
        await self._send([(p.bundle_id, p.device_id, p.payload) for p in pushes])
        return len(pushes)

    async def refresh(self, campaign: Campaign, devices: Iterable[str] | None = None) -> int:
        """Re-plan the campaign for its holders (or these devices): a fresh bundle (current
        stock, new expiry) to those it still selects, a revocation to the others."""
        holders = await self._db.call(pushed_devices, campaign.id)
        wanted = set(devices) if devices is not None else holders
        if not wanted:
            return 0
        now = utcnow()
        if len(wanted) == 1:
            facts = await self._db.call(device_facts, next(iter(wanted)))
        else:
            facts = [f for f in await self._db.call(device_facts) if f.device_id in wanted]
        stock = await self._db.call(stock_left, campaign.id)
        pushes = []
        for f in facts:
            plan = plan_device(campaign, f, now)
            if plan is not None:
                pushes.append(self._bundle(campaign, f.device_id, plan, now, stock))
            elif f.device_id in holders:
                pushes.append(self._revocation(campaign, f.device_id, now))
        if not pushes:
            return 0
        await self._db.call(add_device_pushes, pushes, campaign.id, per_device=True)
        await self._send([(p.bundle_id, p.device_id, p.payload) for p in pushes])
        self._counters["device_bundles_refreshed"] += len(pushes)
        return len(pushes)

    async def refresh_due(self) -> int:
        """Fresh bundles for holders whose bundle is past half its lifetime (before devices
        drop it), unless it already lasts as long as the campaign."""
        now = utcnow()
        done = 0
        for campaign_id, devices in (await self._db.call(bundles_past_half_life, now)).items():
            doc = await self._db.call(get_campaign, campaign_id)
            if doc is None:
                continue
            campaign = Campaign.model_validate(doc)
            if campaign.ends_at is not None and campaign.ends_at <= now + self._ttl:
                continue  # the bundle already lives until the campaign ends
            done += await self.refresh(campaign, devices)
        return done

    async def resign_revoked(self, kids: Iterable[str]) -> int:
        """Fresh bundles, signed by the active key, for holders whose current bundle a
        revoked key signed: devices dropped those offers when they took the list that
        revokes it (issue 14)."""
        done = 0
        for campaign_id, devices in (await self._db.call(signed_by, set(kids))).items():
            doc = await self._db.call(get_campaign, campaign_id)
            if doc is not None:
                done += await self.refresh(Campaign.model_validate(doc), devices)
        self._counters["device_bundles_resigned"] += done
        return done

    def note_facts(self, device_id: str, _batch: object = None) -> None:
        """New reports from a device (ingest hook, must not block): re-check its targeting
        on the next tick. Bounded: past the limit, the device waits for its next report."""
        if device_id in self._facts_due:
            return
        if len(self._facts_due) >= MAX_FACTS_DUE:
            self._counters["facts_recheck_deferred"] += 1
            return
        self._facts_due.add(device_id)

    async def recheck_due(self) -> int:
        """Re-plan live per-device campaigns that need facts for devices with new reports."""
        devices, self._facts_due = self._facts_due, set()
        if not devices:
            return 0
        live = [Campaign.model_validate(d) for d in await self._db.call(list_campaigns, "live")]
        live = [c for c in live if c.per_device and needs_facts(c)]
        done = 0
        now = utcnow()
        facts: dict[str, DeviceFacts] = {}
        if live and len(devices) <= RECHECK_ONE_BY_ONE:
            for d in devices:
                facts.update((f.device_id, f) for f in await self._db.call(device_facts, d))
        elif live:
            facts = {f.device_id: f for f in await self._db.call(device_facts)}
        for campaign in live:
            holders = await self._db.call(pushed_devices, campaign.id)
            changed = [
                d
                for d in sorted(devices)
                if d in facts
                and (plan_device(campaign, facts[d], now) is not None) != (d in holders)
            ]
            if changed:
                done += await self.refresh(campaign, changed)
        return done

    async def on_birth(self, device_id: str) -> None:
        """A device came online: push live per-device campaigns it now matches, re-send the rest."""
        async with self._birth_lock:
            live = [Campaign.model_validate(d) for d in await self._db.call(list_campaigns, "live")]
            live = [c for c in live if c.per_device]
            if live:
                facts = await self._db.call(device_facts, device_id)
                now = utcnow()
                for campaign in live:
                    if not facts or device_id in await self._db.call(pushed_devices, campaign.id):
                        continue
                    plan = plan_device(campaign, facts[0], now)
                    if plan is None:
                        continue
                    stock = await self._db.call(stock_left, campaign.id)
                    push = self._bundle(campaign, device_id, plan, now, stock)
                    await self._db.call(add_device_pushes, [push], None)
            due = await self._db.call(outstanding, utcnow(), device_id)
        if due:
            self._counters["device_bundles_resent_on_birth"] += len(due)
        await self._send(due)

    async def _quarantine(self, bundle_id: str, device_id: str, reason: str) -> None:
        self._counters["pushes_quarantined"] += 1
        log.error("device bundle %s for %s quarantined: %s", bundle_id, device_id, reason)
        await self._db.call(quarantine_push, bundle_id, reason)

    async def on_receipts(self, device_id: str, ids: list[str]) -> None:
        matched = await self._db.call(apply_receipts, device_id, ids, utcnow())
        self._counters["device_bundle_receipts"] += matched

    async def resend_due(self, older_than: timedelta) -> int:
        """Re-send bundles still without a receipt whose last send is older than `older_than`."""
        now = utcnow()
        due = await self._db.call(outstanding, now, None, now - older_than)
        await self._send(due)
        return len(due)

    async def _send(self, items: Iterable[tuple[str, str, dict[str, Any] | None]]) -> None:
        todo = list(items)
        sent: list[str] = []

        async def one(bundle_id: str, device_id: str, payload: dict[str, Any] | None) -> None:
            if payload is None:  # a poisoned row: set aside (kept, counted), not retried
                await self._quarantine(bundle_id, device_id, "its payload is not a JSON object")
                return
            try:
                wire = codec.encode_dict(payload)
            except (ValueError, TypeError) as exc:
                await self._quarantine(bundle_id, device_id, f"cannot be encoded: {exc}")
                return
            try:
                await self._publish(self._topics.offers(device_id), wire, False)
            except GatewayError as exc:
                log.debug("bundle %s for %s not sent now: %s", bundle_id, device_id, exc)
                return
            sent.append(bundle_id)

        for start in range(0, len(todo), PUBLISH_CONCURRENCY):
            chunk = todo[start : start + PUBLISH_CONCURRENCY]
            await asyncio.gather(*(one(*item) for item in chunk))
        if sent:
            self._counters["device_bundles_sent"] += len(sent)
            await self._db.call(mark_sent, sent, utcnow())
