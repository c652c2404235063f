"""Campaign operations with I/O: store, sign and publish retained cohort catalogs, audit."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta

from cloud_gateway.campaigns.delivery import DeviceDelivery
from cloud_gateway.campaigns.explain import explain
from cloud_gateway.campaigns.model import (
    Campaign,
    CampaignIn,
    build_catalog,
    due_action,
    new_campaign,
    transition,
)
from cloud_gateway.campaigns.pending import Owed
from cloud_gateway.campaigns.policy import PolicyService
from cloud_gateway.campaigns.reach import (
    PREVIEW_KEY,
    Audience,
    AudienceIn,
    Vocabulary,
    audience,
    count_audience,
    idle_reason,
    shipped_vocabulary,
    unknown_audience_values,
    unreachable_values,
)
from cloud_gateway.campaigns.results import CampaignResults, campaign_results
from cloud_gateway.campaigns.trends import CampaignTrends, campaign_trends, window_start
from cloud_gateway.db import leases
from cloud_gateway.db.campaigns import (
    campaign_rows,
    catalogs,
    change_campaign,
    clear_pending,
    create_campaign,
    get_campaign,
    list_campaigns,
    pending,
    record_catalog,
    replace_draft,
)
from cloud_gateway.db.claims import stock_left
from cloud_gateway.db.devices import device_facts
from cloud_gateway.db.explain import explanation_counts
from cloud_gateway.db.policies import last_publication
from cloud_gateway.db.trends import trend_rows
from cloud_gateway.errors import Conflict, GatewayError, InvalidInput, NotFound
from cloud_gateway.runtime.wiring import Service, Wiring
from protocol import codec
from protocol.ids import format_time, parse_time, utcnow

log = logging.getLogger(__name__)

SETTLE_CLAIM = "campaign-settle"
SETTLE_CLAIM_S = 30.0
"""How long a settle claim lasts; renewed before each marker is acted on, so it only runs out
when its worker died mid-run (another worker then takes over within this time) or one
marker's pushes took longer than this."""
SETTLE_RETRY_S = 1.0


class CampaignService(Service):
    """Create, launch, pause campaigns; every change rebuilds the catalogs it touches."""

    def __init__(self, wiring: Wiring, *, bundle_ttl: timedelta = timedelta(days=7)) -> None:
        super().__init__(wiring)
        self._ttl = bundle_ttl
        self._lock = asyncio.Lock()  # one catalog rebuild at a time: publishes stay ordered
        self._settle_wanted = asyncio.Event()
        self.dirty: set[str] = set()
        self.delivery = DeviceDelivery(wiring, bundle_ttl=bundle_ttl)
        self.policies = PolicyService(wiring)
        """The operators' caps, quiet hours and holdout (issue 18)."""
        self._holder = f"campaigns-{uuid.uuid4().hex[:12]}"

    @property
    def holder(self) -> str:
        """Who this service's settle claims are held by (`db/leases.py`)."""
        return self._holder

    async def create(self, spec: CampaignIn, who: str) -> Campaign:
        """Store a draft; 409 (Conflict) when an offer id is already another campaign's, 400
        (InvalidInput, listing the known values) when it names a surface, category or cohort
        no device knows: such a campaign could reach no one."""
        await self._check_reachable(spec)
        now = utcnow()
        campaign = new_campaign(spec, now)
        limited = [(o.id, o.stock) for o in campaign.offers if o.limited and o.stock is not None]
        detail = {
            "name": campaign.name,
            "offers": len(campaign.offers),
            "push": self._mode(campaign),
        }
        await self._db.call(
            create_campaign, campaign.doc(), stock=limited, who=who, at=now, detail=detail
        )
        log.info("campaign %s (%s) created by %s", campaign.id, campaign.name, who)
        return campaign

    async def _vocabulary(self, cohorts: Iterable[str]) -> Vocabulary:
        """What devices know, with the cohorts registered devices reported when `cohorts`
        names one the shipped profiles do not."""
        vocab = await asyncio.to_thread(shipped_vocabulary)
        if any(c not in vocab.cohorts for c in cohorts):
            facts = await self._db.call(device_facts)
            vocab = vocab.with_cohorts(c for f in facts for c in f.cohorts)
        return vocab

    async def _check_reachable(self, spec: CampaignIn) -> None:
        errors = unreachable_values(spec, await self._vocabulary(spec.cohorts))
        if errors:
            raise InvalidInput("the campaign names values no device knows", errors=errors)

    async def edit(self, campaign_id: str, spec: CampaignIn, who: str) -> Campaign:
        """Replace a draft's content (its id and creation time stay); 409 (Conflict) once it
        was launched, or when an offer id is another campaign's; 400 as `create`."""
        before = await self.get(campaign_id)
        if before.state != "draft":
            raise Conflict(
                f"campaign {campaign_id} is {before.state}: only a draft can be edited",
                field="state",
            )
        await self._check_reachable(spec)
        now = utcnow()
        fresh = new_campaign(spec, now)
        after = fresh.model_copy(update={"id": before.id, "created_at": before.created_at})
        limited = [(o.id, o.stock) for o in after.offers if o.limited and o.stock is not None]
        detail = {"name": after.name, "offers": len(after.offers), "push": self._mode(after)}
        await self._db.call(
            replace_draft, after.doc(), stock=limited, who=who, at=now, detail=detail
        )
        log.info("campaign %s (%s) edited by %s", after.id, after.name, who)
        return after

    async def preview(self, spec: AudienceIn) -> Audience:
        """Whom a campaign with this audience part would reach now (400 naming unknown
        cohorts and categories, as `create` would)."""
        vocab = await self._vocabulary(spec.cohorts)
        errors = unknown_audience_values(spec.cohorts, spec.targeting, vocab)
        if errors:
            raise InvalidInput("the audience names values no device knows", errors=errors)
        facts = await self._db.call(device_facts)
        key = spec.campaign_id or PREVIEW_KEY
        return count_audience(
            spec.targeting, list(spec.cohorts), key, spec.holdout, facts, utcnow()
        )

    async def trends(self, campaign_id: str, hours: int) -> CampaignTrends:
        """Impressions, clicks and conversions per hour over the last `hours` hours."""
        campaign = await self.get(campaign_id)
        now = utcnow()
        since = format_time(window_start(now, hours))
        rows = await self._db.call(trend_rows, campaign_id, since)
        return campaign_trends(campaign, rows, now, hours)

    async def audience(self, campaign: Campaign) -> Audience:
        """Whom `campaign` would reach now among the registered devices."""
        facts = await self._db.call(device_facts)
        return audience(campaign, facts, utcnow())

    async def get(self, campaign_id: str) -> Campaign:
        doc = await self._db.call(get_campaign, campaign_id)
        if doc is None:
            raise NotFound("campaign", campaign_id)
        return Campaign.model_validate(doc)

    async def list(self) -> list[Campaign]:
        return [Campaign.model_validate(d) for d in await self._db.call(list_campaigns)]

    async def launch(self, campaign_id: str, who: str) -> Campaign:
        return await self._change(campaign_id, "launch", who)

    async def pause(self, campaign_id: str, who: str) -> Campaign:
        return await self._change(campaign_id, "pause", who)

    async def end(self, campaign_id: str, who: str) -> Campaign:
        return await self._change(campaign_id, "end", who)

    @staticmethod
    def _mode(campaign: Campaign) -> str:
        return "device" if campaign.per_device else "cohort"

    @staticmethod
    def owed(before: Campaign, after: Campaign) -> tuple[Owed, ...]:
        """The pushes a state change owes devices (pure)."""
        went_live = after.state == "live" and before.state != "live"
        left_live = before.state == "live" and after.state != "live"
        if after.per_device:
            if went_live:
                return (Owed("device_launch", after.id),)
            if left_live:
                return (Owed("device_revoke", after.id),)
            return ()
        if went_live or left_live:
            revokes = tuple(o.id for o in before.offers) if left_live else ()
            return (Owed("catalog", after.id, tuple(after.push_cohorts), revokes),)
        return ()

    async def _change(self, campaign_id: str, action: str, who: str) -> Campaign:
        async with self._lock:
            before = await self.get(campaign_id)
            now = utcnow()
            after = transition(before, action, now)
            # The state, its audit row and the pushes it owes commit together: a crash after
            # the commit leaves markers that `settle` acts on at the next start.
            await self._db.call(
                change_campaign,
                after.doc(),
                who=who,
                action=f"campaign.{action}",
                detail={"from": before.state, "to": after.state},
                at=now,
                owed=self.owed(before, after),
                from_state=before.state,  # once, even if two workers race (issue 12)
            )
            await self._settle_locked()
        log.info(
            "campaign %s %s by %s: %s -> %s", campaign_id, action, who, before.state, after.state
        )
        return after

    def poke(self) -> None:
        """Ask `run_settler` to act on stored push markers soon (never blocks the caller)."""
        self._settle_wanted.set()

    async def run_settler(self) -> None:
        """Act on push markers when poked (a sell-out, a reconnect); a named gateway task."""
        while True:
            await self._settle_wanted.wait()
            self._settle_wanted.clear()
            try:
                await self.settle()
            except GatewayError as exc:
                log.warning("pending campaign pushes not done: %s; will retry", exc)

    async def settle(self) -> int:
        """Act on every stored push marker (at start-up: those a crash left); returns how many."""
        async with self._lock:
            return await self._settle_locked()

    async def _settle_locked(self) -> int:
        # Once across workers: two workers acting on one marker would push its bundles
        # twice. The markers are claimed whole by a lease; a worker that finds it taken asks
        # again soon (the holder may have read the markers before this worker stored its).
        # One SQLite file serves one worker (a file lock): nothing to claim there, and a claim
        # a killed process left would only hold this one up.
        if self._db.dialect.name == "sqlite":
            return await self._settle_claimed()
        try:
            # The claim is taken inside the `try`: a settle cancelled (the gateway stopping)
            # while its claim is being written still releases it. Taken outside, it stayed
            # for `SETTLE_CLAIM_S` (120 s then) and the next gateway's first launch pushed
            # nothing meanwhile (issue 14's "catalog not pushed after a restart").
            if not await self._claim_settle():
                asyncio.get_running_loop().call_later(SETTLE_RETRY_S, self._settle_wanted.set)
                return 0
            return await self._settle_claimed()
        finally:
            await asyncio.shield(self._db.call(leases.release, self._holder, [SETTLE_CLAIM]))

    async def _claim_settle(self) -> bool:
        """Take, or renew, the settle claim for `SETTLE_CLAIM_S` from now."""
        held: bool = await self._db.call(leases.acquire, SETTLE_CLAIM, self._holder, SETTLE_CLAIM_S)
        return held

    async def _settle_claimed(self) -> int:
        todo = await self._db.call(pending)
        if not todo:
            return 0
        done: list[int] = []
        cohorts: set[str] = set()
        revokes: set[str] = set()
        catalog_ids: list[int] = []
        for item in todo:
            if self._db.dialect.name != "sqlite" and not await self._claim_settle():
                break  # held too long: another worker took over; it acts on what is left
            owed = item.owed
            if owed.kind == "catalog":
                cohorts.update(owed.cohorts)
                revokes.update(owed.revokes)
                catalog_ids.append(item.id)
                continue
            doc = await self._db.call(get_campaign, owed.campaign_id)
            campaign = Campaign.model_validate(doc) if doc is not None else None
            if campaign is not None:
                if owed.kind == "device_revoke":
                    await self.delivery.revoke(campaign)
                elif campaign.state == "live" and owed.kind == "device_launch":
                    await self.delivery.launch(campaign)
                elif campaign.state == "live" and owed.kind == "device_refresh":
                    await self.delivery.refresh(campaign)
            done.append(item.id)
        if catalog_ids and await self._rebuild_locked(cohorts, revokes):
            done.extend(catalog_ids)  # kept (and retried) while a catalog failed to go out
        if done:
            await self._db.call(clear_pending, done)
        return len(done)

    async def stats(self, campaign_id: str) -> CampaignResults:
        campaign = await self.get(campaign_id)
        rows = await self._db.call(campaign_rows, campaign_id)
        results = campaign_results(campaign, rows)
        explained = explain(await self._db.call(explanation_counts, campaign_id))
        results = results.model_copy(update={"explanations": explained})
        if campaign.state == "live" and results.delivered == 0:
            reason = idle_reason(campaign, await self.audience(campaign), results.delivered)
            results = results.model_copy(update={"idle_reason": reason})
        return results

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

    async def _rebuild_locked(self, cohorts: Iterable[str], revokes: Iterable[str]) -> bool:
        """Sign and publish the catalog of each cohort; a failed publish leaves it dirty.

        Returns True when every catalog went out."""
        live = [Campaign.model_validate(d) for d in await self._db.call(list_campaigns, "live")]
        revoked = list(revokes)
        stock = {
            c.id: await self._db.call(stock_left, c.id)
            for c in live
            if any(o.limited for o in c.offers)
        }
        ok = True
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
                ok = False
                log.warning("catalog of cohort %s not pushed (%s); will retry", cohort, exc)
                continue
            self.dirty.discard(cohort)
            self._counters["bundles_pushed"] += 1
            self._counters["offers_pushed"] += len(bundle.offers)
            await self._db.call(
                record_catalog, cohort, bundle.id, per_campaign, now, bundle.expires_at
            )
            log.info(
                "pushed catalog %s to cohort %s: %d offers", bundle.id, cohort, len(bundle.offers)
            )
        return ok

    async def republish_all(self) -> None:
        """Sign and publish every cohort's catalog again (the signing key changed: devices
        drop what a revoked key signed, issue 14)."""
        cohorts = {row["cohort"] for row in await self._db.call(catalogs)}
        if cohorts:
            await self.rebuild(cohorts)
        if await self._db.call(last_publication) is not None:
            await self.policies.publish()

    async def refresh_due(self) -> None:
        """Act on stored push markers; republish dirty catalogs, and those past half their
        lifetime before devices drop them; refresh device bundles past half theirs."""
        await self.settle()
        await self.delivery.refresh_due()
        await self.policies.refresh_due()
        now = utcnow()
        due = set(self.dirty)
        for row in await self._db.call(catalogs):
            published = parse_time(row["published_at"])
            expires = parse_time(row["expires_at"])
            if now >= published + (expires - published) / 2 and row["offers"] > 0:
                due.add(row["cohort"])
        if due:
            await self.rebuild(due)
