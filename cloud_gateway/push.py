"""Campaign operations with I/O: store, sign and publish retained cohort catalogs, audit."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta

from cloud_gateway.campaign_store import campaign_rows, init_stock, stock_left
from cloud_gateway.campaigns import (
    Campaign,
    CampaignIn,
    build_catalog,
    due_action,
    new_campaign,
    transition,
)
from cloud_gateway.delivery import DeviceDelivery
from cloud_gateway.errors import GatewayError, NotFound
from cloud_gateway.ingest import Publish
from cloud_gateway.results import CampaignResults, campaign_results
from cloud_gateway.store import Database, Store
from protocol import codec
from protocol.ids import parse_time, utcnow
from protocol.signing import Signer
from protocol.topics import Topics

log = logging.getLogger(__name__)


class CampaignService:
    """Create, launch, pause campaigns; every change rebuilds the catalogs it touches."""

    def __init__(
        self,
        db: Database,
        signer: Signer,
        topics: Topics,
        publish: Publish,
        counters: Counter[str],
        *,
        bundle_ttl: timedelta = timedelta(days=7),
    ) -> None:
        self._db = db
        self._signer = signer
        self._topics = topics
        self._publish = publish
        self._counters = counters
        self._ttl = bundle_ttl
        self._lock = asyncio.Lock()  # one catalog rebuild at a time: publishes stay ordered
        self.dirty: set[str] = set()
        self.delivery = DeviceDelivery(db, signer, topics, publish, counters, bundle_ttl=bundle_ttl)

    async def create(self, spec: CampaignIn, who: str) -> Campaign:
        campaign = new_campaign(spec, utcnow())
        await self._db.call(Store.insert_campaign, campaign.doc())
        limited = [(o.id, o.stock) for o in campaign.offers if o.limited and o.stock is not None]
        if limited:
            await self._db.call(init_stock, campaign.id, limited)
        await self._db.call(
            Store.audit,
            who,
            "campaign.create",
            campaign.id,
            utcnow(),
            {"name": campaign.name, "offers": len(campaign.offers), "push": self._mode(campaign)},
        )
        log.info("campaign %s (%s) created by %s", campaign.id, campaign.name, who)
        return campaign

    async def get(self, campaign_id: str) -> Campaign:
        doc = await self._db.call(Store.get_campaign, campaign_id)
        if doc is None:
            raise NotFound("campaign", campaign_id)
        return Campaign.model_validate(doc)

    async def list(self) -> list[Campaign]:
        return [Campaign.model_validate(d) for d in await self._db.call(Store.list_campaigns)]

    async def launch(self, campaign_id: str, who: str) -> Campaign:
        return await self._change(campaign_id, "launch", who)

    async def pause(self, campaign_id: str, who: str) -> Campaign:
        return await self._change(campaign_id, "pause", who)

    async def end(self, campaign_id: str, who: str) -> Campaign:
        return await self._change(campaign_id, "end", who)

    @staticmethod
    def _mode(campaign: Campaign) -> str:
        return "device" if campaign.per_device else "cohort"

    async def _change(self, campaign_id: str, action: str, who: str) -> Campaign:
        async with self._lock:
            before = await self.get(campaign_id)
            after = transition(before, action, utcnow())
            await self._db.call(Store.update_campaign, after.doc())
            await self._db.call(
                Store.audit,
                who,
                f"campaign.{action}",
                campaign_id,
                utcnow(),
                {"from": before.state, "to": after.state},
            )
            went_live = after.state == "live" and before.state != "live"
            left_live = before.state == "live" and after.state != "live"
            if after.per_device:
                if went_live:
                    await self.delivery.launch(after)
                elif left_live:
                    await self.delivery.revoke(after)
            elif went_live or left_live:
                revokes = [o.id for o in before.offers] if left_live else []
                await self._rebuild_locked(after.push_cohorts, revokes)
        log.info(
            "campaign %s %s by %s: %s -> %s", campaign_id, action, who, before.state, after.state
        )
        return after

    async def stats(self, campaign_id: str) -> CampaignResults:
        campaign = await self.get(campaign_id)
        rows = await self._db.call(campaign_rows, campaign_id)
        return campaign_results(campaign, rows)

    async def run_due(self) -> int:
        """Start scheduled campaigns whose time has come, end those past `ends_at`."""
        done = 0
        now = utcnow()
        for campaign in await self.list():
            action = due_action(campaign, now)
            if action is None:
                continue
            try:
                await self._change(campaign.id, action, "scheduler")
            except GatewayError as exc:
                log.warning("scheduler could not %s campaign %s: %s", action, campaign.id, exc)
                continue
            done += 1
        return done

    async def rebuild(self, cohorts: Iterable[str]) -> None:
        async with self._lock:
            await self._rebuild_locked(cohorts, ())

    async def _rebuild_locked(self, cohorts: Iterable[str], revokes: Iterable[str]) -> None:
        """Sign and publish the catalog of each cohort; a failed publish leaves it dirty."""
        live = [
            Campaign.model_validate(d) for d in await self._db.call(Store.list_campaigns, "live")
        ]
        revoked = list(revokes)
        stock = {
            c.id: await self._db.call(stock_left, c.id)
            for c in live
            if any(o.limited for o in c.offers)
        }
        for cohort in sorted(set(cohorts)):
            now = utcnow()
            bundle, per_campaign = build_catalog(cohort, live, now, self._ttl, revoked, stock)
            signed = self._signer.sign(bundle.to_wire())
            try:
                await self._publish(
                    self._topics.cohort_offers(cohort), codec.encode_dict(signed), True
                )
            except GatewayError as exc:
                self.dirty.add(cohort)
                log.warning("catalog of cohort %s not pushed (%s); will retry", cohort, exc)
                continue
            self.dirty.discard(cohort)
            self._counters["bundles_pushed"] += 1
            self._counters["offers_pushed"] += len(bundle.offers)
            await self._db.call(
                Store.record_catalog, cohort, bundle.id, per_campaign, now, bundle.expires_at
            )
            log.info(
                "pushed catalog %s to cohort %s: %d offers", bundle.id, cohort, len(bundle.offers)
            )

    async def refresh_due(self) -> None:
        """Republish dirty catalogs, and those past half their lifetime before devices drop them."""
        now = utcnow()
        due = set(self.dirty)
        for row in await self._db.call(Store.catalogs):
            published = parse_time(row["published_at"])
            expires = parse_time(row["expires_at"])
            if now >= published + (expires - published) / 2 and row["offers"] > 0:
                due.add(row["cohort"])
        if due:
            await self.rebuild(due)
