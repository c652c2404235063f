"""Live-sale waves (issue 19): a campaign whose limited offers open in scheduled waves, each
with its own stock, sent to devices ahead of time and sealed until their time.

A live sale is an ordinary campaign (`POST /v1/live-sales` makes it): each wave's offers get
`starts_at` = the wave's time, and the catalog carries a limited offer whose window has not
opened with `not_before` (`campaigns.model.build_offers`), so devices hold every wave from the
launch and reveal each at its second on the gateway's clock: no push at the wave. The gateway
refuses a claim before its wave (`claim_refusal`: the offer's window).

The crowd is absorbed at the edge (`campaigns.admission`): each wave offer carries the share
of devices admitted at its reveal (`admit`, stock / the crowd expected: `crowd` or the
registered devices the sale reaches); only devices whose stable ticket is below it claim.
While stock remains, `run` grows the share round by round and announces it on the cohort's
notice (`SoldOut.admit`), so every device that wants the offer gets its turn.

Sold out: when a claim batch takes a wave offer's last coupon, or stock is pulled, `poke`
wakes `run`, which publishes each cohort's signed `SoldOut` (retained on
`cohort/{c}/soldout`): the offers of live wave campaigns with no stock left. Devices then
stop claiming them (`agent.offers.waves`). Stock added back drops an offer from the next
notice. Each notice is also a live sample of the gateway's clock for devices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud_gateway.campaigns.admission import Admission, first_share, tickets_of
from cloud_gateway.campaigns.model import (
    MAX_OFFERS_PER_CAMPAIGN,
    CampaignIn,
    OfferTemplate,
)
from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.campaigns.targeting import selects
from cloud_gateway.db import waves as sql
from cloud_gateway.db.devices import device_facts
from cloud_gateway.errors import GatewayError
from cloud_gateway.runtime.wiring import Service, Wiring
from protocol import codec
from protocol.envelopes import Cohort, Id, UtcTime
from protocol.ids import format_time, new_id, parse_time, utcnow
from protocol.waves import MAX_SOLD_OUT, SoldOut

log = logging.getLogger(__name__)

MAX_WAVES = 24
NOTICE_TTL = timedelta(days=2)
STAMP_BEFORE = timedelta(seconds=5)
"""A fresh signed timestamp goes out this long before each wave (devices' clock samples)."""
MAX_SLEEP_S = 2.0
"""`run` looks at the schedule again at least this often (a sale launched meanwhile): one
indexed query, so a wave launched less than `STAMP_BEFORE` ahead still gets its sample."""
ROUND_TICK_S = 0.2
"""How often `run` looks at the admission rounds while a share may still grow."""


class WaveIn(BaseModel):
    """One wave: its time and its offers (limited, each with its stock)."""

    model_config = ConfigDict(extra="forbid")

    at: UtcTime
    offers: Annotated[list[OfferTemplate], Field(min_length=1, max_length=20)]

    @model_validator(mode="after")
    def _limited(self) -> WaveIn:
        for i, o in enumerate(self.offers):
            if not o.limited or o.stock is None:
                raise ValueError(f"offers.{i}: a wave's offer is limited, with its stock")
            if o.starts_at is not None:
                raise ValueError(f"offers.{i}: starts_at is the wave's `at`")
        return self


class LiveSaleIn(BaseModel):
    """`POST /v1/live-sales`: a campaign of waves (a draft: launch it as any campaign)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=120)]
    cohorts: Annotated[list[Cohort], Field(min_length=1, max_length=16)]
    waves: Annotated[list[WaveIn], Field(min_length=1, max_length=MAX_WAVES)]
    ends_at: UtcTime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> LiveSaleIn:
        times = [w.at for w in self.waves]
        if times != sorted(times) or len(set(times)) != len(times):
            raise ValueError("waves must be in time order, at distinct times")
        if sum(len(w.offers) for w in self.waves) > MAX_OFFERS_PER_CAMPAIGN:
            raise ValueError(f"at most {MAX_OFFERS_PER_CAMPAIGN} offers over all waves")
        if self.ends_at is not None and self.ends_at <= times[-1]:
            raise ValueError("ends_at must be after the last wave")
        return self

    def with_ids(self) -> LiveSaleIn:
        """The same sale with an id on every offer (the tickets are per offer id)."""
        waves = [
            w.model_copy(
                update={"offers": [o.model_copy(update={"id": o.id or new_id()}) for o in w.offers]}
            )
            for w in self.waves
        ]
        return self.model_copy(update={"waves": waves})

    def campaign(self, shares: Mapping[str, float | None] | None = None) -> CampaignIn:
        """The campaign of these waves (`with_ids` first); `shares`: each offer's admission
        share at its reveal, unless the offer gives its own `admit`."""
        offers = [
            o.model_copy(
                update={
                    "starts_at": w.at,
                    "id": o.id or new_id(),
                    "admit": o.admit or (shares or {}).get(o.id or ""),
                }
            )
            for w in self.waves
            for o in w.offers
        ]
        return CampaignIn(name=self.name, cohorts=self.cohorts, offers=offers, ends_at=self.ends_at)


class StockIn(BaseModel):
    """`POST /v1/live-sales/{id}/stock`: coupons added (> 0) or pulled (< 0) of one offer."""

    model_config = ConfigDict(extra="forbid")

    offer_id: Id
    delta: Annotated[int, Field(ge=-10_000_000, le=10_000_000)]


def sold_out_notice(cohort: str, offers: list[str], now: datetime) -> SoldOut:
    """A cohort's notice; its version is the clock in milliseconds (only increases)."""
    return SoldOut(
        id=new_id(),
        cohort=cohort,
        version=max(1, int(now.timestamp() * 1000)),
        at=now,
        offers=offers[:MAX_SOLD_OUT],
        expires_at=now + NOTICE_TTL,
    )


class WaveDesk(Service):
    """Creates live sales, changes their stock, and broadcasts what is sold out (`run`)."""

    def __init__(
        self,
        wiring: Wiring,
        campaigns: CampaignService,
        *,
        stamp: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`stamp`: publish the signed `Timestamp` now (`SessionHooks.publish_timestamp`):
        `run` does it `STAMP_BEFORE` each wave, so every device holds a live sample of the
        gateway's clock (one message per cohort-free topic, not a push per device)."""
        super().__init__(wiring)
        self._campaigns = campaigns
        self._stamp = stamp
        self._wake = asyncio.Event()
        self._sent: dict[str, tuple[list[str], dict[str, float]]] = {}
        """What was last announced per cohort (sold out, shares): a notice goes out only on
        a change."""
        self._admission = Admission()
        self._reveals: set[datetime] = set()
        """Waves ahead seen by `run`: each is looked at once revealed (its first round)."""

    async def create(self, spec: LiveSaleIn, who: str) -> dict[str, Any]:
        spec = spec.with_ids()
        reached = await self._reached(spec.cohorts)
        shares = {  # hashing every reached device: off the event loop
            o.id: first_share(o.stock or 0, await asyncio.to_thread(tickets_of, reached, o.id))
            for w in spec.waves
            for o in w.offers
            if o.id is not None
        }
        campaign = await self._campaigns.create(spec.campaign(shares), who)
        per_wave: list[tuple[datetime, list[str]]] = []
        ids = iter(o.id for o in campaign.offers)
        for wave in spec.waves:
            per_wave.append((wave.at, [next(ids) for _ in wave.offers]))
        await self._db.call(sql.record_waves, campaign.id, per_wave)
        if len(self._reveals) < MAX_WAVES:  # `run` sees them within `MAX_SLEEP_S`; no wake:
            self._reveals.update(w.at for w in spec.waves)  # a draft has no clock stamp due
        return {"campaign": campaign.doc(), "waves": await self.waves(campaign.id)}

    async def _reached(self, cohorts: list[str]) -> list[str]:
        """The registered devices a sale in `cohorts` reaches (their tickets set shares)."""
        now = utcnow()
        facts = await self._db.call(device_facts)
        return [f.device_id for f in facts if selects(None, cohorts, f, now)]

    async def waves(self, campaign_id: str) -> list[dict[str, Any]]:
        """Each wave's offers with their stock and `admitted`: the share of the crowd its
        rounds admit now (None: not opened by this gateway, or no admission)."""
        waves = await self._db.call(sql.waves_of, campaign_id)
        for wave in waves:
            for offer in wave["offers"]:
                offer["admitted"] = self._admission.share(offer["offer_id"])
        return waves

    async def change_stock(self, campaign_id: str, spec: StockIn, who: str) -> dict[str, Any]:
        await self.waves(campaign_id)  # a 404 unless it is a live sale
        got = await self._db.call(
            sql.change_stock, campaign_id, spec.offer_id, spec.delta, who=who, at=utcnow()
        )
        self._campaigns.poke()  # the catalogs carry the new stock
        self.poke()
        return {"campaign_id": campaign_id, "offer_id": spec.offer_id, **got}

    def poke(self) -> None:
        """Something sold out or stock changed: `run` announces what is sold out now."""
        self._wake.set()

    async def broadcast(self) -> int:
        """Publish each cohort's notice whose list or admission shares changed; the number
        published."""
        now = utcnow()
        current = await self._db.call(sql.sold_out_by_cohort)
        shares = await self._shares(now)
        sent = 0
        for cohort in sorted(current.keys() | shares.keys()):
            offers, admit = current.get(cohort, []), shares.get(cohort, {})
            if self._sent.get(cohort) == (offers, admit):
                continue
            notice = sold_out_notice(cohort, offers, now)
            if admit:
                notice = notice.model_copy(update={"admit": admit})
            signed = self._signer.sign(notice.to_wire())
            await self._publish(
                self._topics.cohort_soldout(cohort), codec.encode_dict(signed), True
            )
            self._sent[cohort] = (offers, admit)
            self._counters["soldout_notices"] += 1
            sent += 1
        return sent

    async def _shares(self, now: datetime) -> dict[str, dict[str, float]]:
        """Each cohort's revealed wave offers in stock whose share grew past the reveal's."""
        rows = await self._db.call(sql.admission_offers, format_time(now))
        tick = time.monotonic()
        out: dict[str, dict[str, float]] = {}
        reached: dict[tuple[str, ...], list[str]] = {}
        for r in rows:
            oid, taken, left = r["offer_id"], r["taken"], r["left"]
            if self._admission.knows(oid):
                share = self._admission.observe(oid, taken, left, tick)
            else:  # revealed now (or this gateway restarted): its first round opens
                key = tuple(r["cohorts"])
                if key not in reached:
                    reached[key] = await self._reached(r["cohorts"])
                tickets = await asyncio.to_thread(tickets_of, reached[key], oid)
                share = self._admission.start(
                    oid, tickets, r["admit"], taken=taken, left=left, now=tick
                )
            if share > r["admit"] and left > 0:
                for cohort in r["cohorts"]:
                    out.setdefault(cohort, {})[oid] = round(share, 12)
        self._admission.retain({r["offer_id"] for r in rows})
        return out

    async def _until_next_stamp(self) -> float | None:
        """Seconds until `STAMP_BEFORE` the next wave (None: no wave ahead)."""
        now = utcnow()
        try:
            ahead = await self._db.call(sql.next_wave, format_time(now + STAMP_BEFORE))
        except GatewayError as exc:  # the store is away: look again after `MAX_SLEEP_S`
            log.debug("wave schedule not read: %s", exc)
            return None
        if ahead is None:
            return None
        at = parse_time(ahead)
        if len(self._reveals) < MAX_WAVES:
            self._reveals.add(at)  # looked at once it is revealed (its admission opens)
        return max((at - STAMP_BEFORE - now).total_seconds(), 0.0)

    async def run(self) -> None:
        """Announce what is sold out at each poke (again every `MAX_SLEEP_S` after a failed
        attempt: the link or the store was away); a fresh clock sample before each wave; a
        look at each wave's reveal and every `ROUND_TICK_S` while an admission may grow."""
        failed = True  # a first look at once: a restarted gateway resumes open admissions
        while True:
            wait = await self._until_next_stamp() if self._stamp is not None else None
            sleep = MAX_SLEEP_S if wait is None else min(wait, MAX_SLEEP_S)
            if self._reveals:
                reveal = (min(self._reveals) - utcnow()).total_seconds()
                sleep = max(0.0, min(sleep, reveal))
            if self._admission.open:
                sleep = min(sleep, ROUND_TICK_S)
            try:
                async with asyncio.timeout(sleep):
                    await self._wake.wait()
            except TimeoutError:
                if wait is not None and wait <= sleep and self._stamp is not None:
                    await self._send_stamp()
                now = utcnow()
                revealed = {t for t in self._reveals if t <= now}
                self._reveals -= revealed
                if not (failed or revealed or self._admission.open):
                    continue
            self._wake.clear()
            try:
                await self.broadcast()
                failed = False
            except GatewayError as exc:
                log.info("sold-out notices not sent yet: %s", exc)
                self._sent.clear()
                failed = True

    async def _send_stamp(self) -> None:
        assert self._stamp is not None
        try:
            await self._stamp()
            self._counters["wave_clock_stamps"] += 1
        except GatewayError as exc:
            log.info("wave clock sample not sent: %s", exc)
        await asyncio.sleep(0.01)  # past the wave's stamp time
