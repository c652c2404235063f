"""Campaigns, pure: the operator's input model, the state machine, cohort catalogs, stats."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud_gateway.campaigns.targeting import DeviceFacts, Targeting, selects
from cloud_gateway.errors import InvalidTransition
from protocol.assign import in_holdout, pick_variant
from protocol.envelopes import (
    MAX_OFFERS_PER_BUNDLE,
    Cohort,
    CutTerms,
    Finite,
    GroupTerms,
    Id,
    LongText,
    Name,
    Offer,
    OfferBundle,
    OfferType,
    ShortText,
    UtcTime,
    check_social_terms,
)
from protocol.ids import new_id

CampaignState = Literal["draft", "scheduled", "live", "paused", "ended"]
MAX_OFFERS_PER_CAMPAIGN = 100
MAX_COHORTS_PER_CAMPAIGN = 16
MAX_VARIANTS = 8
VariantName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
Weight = Annotated[Finite, Field(ge=0, le=1000)]
CapsMap = Annotated[dict[Name, Annotated[int, Field(ge=0, le=10_000)]], Field(max_length=8)]


class OfferTemplate(BaseModel):
    """An offer as an operator writes it: the Offer fields but `campaign_id` (`id` optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id | None = None
    variant: Annotated[str, Field(max_length=32)] = "a"
    type: OfferType
    title: Annotated[ShortText, Field(min_length=1)]
    body: LongText = ""
    category: Name
    price: Annotated[Finite, Field(ge=0, le=1e9)] = 0.0
    discount: Annotated[Finite, Field(ge=0, le=1)] = 0.0
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "CNY"
    surfaces: Annotated[list[Name], Field(min_length=1, max_length=16)]
    starts_at: UtcTime | None = None
    expires_at: UtcTime | None = None
    limited: bool = False
    caps: Annotated[dict[Name, Annotated[int, Field(ge=0, le=10_000)]], Field(max_length=8)] = (
        Field(default_factory=dict)
    )
    priority: Annotated[int, Field(ge=0, le=100)] = 50
    stock: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    """Coupons of a limited offer (claimed on `up/claim`); without it, claims are refused."""
    group: GroupTerms | None = None
    """Group buy terms (issue 19): a `group_buy` offer with them can be started and joined."""
    cut: CutTerms | None = None
    """Price cut terms (issue 19): required for a `price_cut` offer."""
    admit: Annotated[Finite, Field(gt=0, le=1)] | None = None
    """A live-sale wave's admission share at its reveal (issue 19; set by `POST
    /v1/live-sales` from the crowd it expects: `campaigns.admission`). None: everyone."""

    @model_validator(mode="after")
    def _window(self) -> OfferTemplate:
        if self.starts_at and self.expires_at and self.expires_at <= self.starts_at:
            raise ValueError("expires_at must be after starts_at")
        if self.stock is not None and not self.limited:
            raise ValueError("stock is only for limited offers (set limited: true)")
        check_social_terms(self.type, self.price, self.group, self.cut)
        if self.admit is not None and self.stock is None:
            raise ValueError("admit is only for limited offers with stock")
        return self


EXAMPLE_CAMPAIGN: dict[str, Any] = {
    "name": "Streaming month -30%",
    "cohorts": ["profile:tv"],
    "holdout": 0.1,
    "offers": [
        {
            "type": "coupon",
            "title": "30% off a month of premium streaming",
            "category": "tv_streaming",
            "price": 30.0,
            "discount": 0.3,
            "surfaces": ["tv_home_banner", "tv_screensaver"],
        }
    ],
}
"""The example `/openapi.json` shows (more per offer type: docs/campaigns/*.json): surfaces,
categories and cohorts must be ones devices know (`campaigns.reach`), which a schema cannot
say, so a client (or a fuzzer) starts from this."""


class CampaignIn(BaseModel):
    """`POST /v1/campaigns` body."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [EXAMPLE_CAMPAIGN]}
    )

    name: Annotated[str, Field(min_length=1, max_length=120)]
    offers: Annotated[list[OfferTemplate], Field(min_length=1, max_length=MAX_OFFERS_PER_CAMPAIGN)]
    cohorts: Annotated[list[Cohort], Field(min_length=1, max_length=MAX_COHORTS_PER_CAMPAIGN)]
    starts_at: UtcTime | None = None
    ends_at: UtcTime | None = None
    targeting: Targeting | None = None
    variants: Annotated[dict[VariantName, Weight], Field(max_length=MAX_VARIANTS)] = Field(
        default_factory=dict
    )
    """Weights of the variants named by the offers (default: equal weights)."""
    holdout: Annotated[Finite, Field(ge=0, le=0.5)] = 0.0
    """Share of the audience held out (shown nothing) to measure uplift against."""
    caps: CapsMap = Field(default_factory=dict)
    """Per-device caps applied to every offer that sets none of its own."""
    priority: Annotated[int, Field(ge=0, le=100)] | None = None
    """Priority of every offer that does not set one (default 50)."""

    @model_validator(mode="after")
    def _consistent(self) -> CampaignIn:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        ids = [o.id for o in self.offers if o.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError("offer ids must be unique within a campaign")
        if len(self.cohorts) != len(set(self.cohorts)):
            raise ValueError("cohorts must be unique")
        named = {o.variant for o in self.offers}
        if self.variants:
            missing = named - set(self.variants)
            if missing:
                raise ValueError(f"variants has no weight for {sorted(missing)}")
            extra = set(self.variants) - named
            if extra:
                raise ValueError(f"variants {sorted(extra)} have no offers")
            if not any(w > 0 for w in self.variants.values()):
                raise ValueError("variants need at least one positive weight")
        return self


class OfferOut(OfferTemplate):
    """A stored offer template: its `id` is always set."""

    id: Id


class Campaign(BaseModel):
    """A campaign as stored and returned by the API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    name: str
    state: CampaignState
    offers: list[OfferOut]
    cohorts: list[Cohort]
    starts_at: UtcTime | None = None
    ends_at: UtcTime | None = None
    created_at: UtcTime
    updated_at: UtcTime
    launched_at: UtcTime | None = None
    targeting: Targeting | None = None
    variants: dict[str, float] = Field(default_factory=dict)
    holdout: float = 0.0

    def doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def weights(self) -> dict[str, float]:
        """Variant weights: the operator's, or equal weights over the offers' variants."""
        if self.variants:
            return dict(self.variants)
        return {v: 1.0 for v in sorted({o.variant for o in self.offers})}

    @property
    def per_device(self) -> bool:
        """True when devices get their own bundles (targeting beyond cohorts, or A/B)."""
        if len([w for w in self.weights.values() if w > 0]) > 1:
            return True
        if self.targeting is None:
            return False
        if self.targeting.per_device:
            return True
        return bool(self.targeting.cohorts()) and self.cohorts != ["all"]

    @property
    def push_cohorts(self) -> list[str]:
        """The cohort catalogs that carry this campaign ([] when pushed per device)."""
        if self.per_device:
            return []
        if self.targeting is not None and self.targeting.cohorts():
            return self.targeting.cohorts()
        return list(self.cohorts)


def new_campaign(spec: CampaignIn, now: datetime) -> Campaign:
    """A draft campaign; every offer gets an id (the operator's or a fresh UUIDv7)."""
    offers = []
    for o in spec.offers:
        fields = o.model_dump()
        fields["id"] = o.id or new_id()
        if spec.caps and not o.caps:
            fields["caps"] = dict(spec.caps)
        if spec.priority is not None and "priority" not in o.model_fields_set:
            fields["priority"] = spec.priority
        offers.append(OfferOut.model_validate(fields))
    return Campaign(
        id=new_id(),
        name=spec.name,
        state="draft",
        offers=offers,
        cohorts=list(spec.cohorts),
        starts_at=spec.starts_at,
        ends_at=spec.ends_at,
        created_at=now,
        updated_at=now,
        targeting=spec.targeting,
        variants=dict(spec.variants),
        holdout=spec.holdout,
    )


TRANSITIONS: dict[str, dict[CampaignState, CampaignState]] = {
    "launch": {"draft": "live", "paused": "live", "live": "live", "scheduled": "scheduled"},
    "start": {"scheduled": "live", "live": "live"},
    "pause": {"live": "paused", "paused": "paused", "scheduled": "paused"},
    "end": {
        "draft": "ended",
        "scheduled": "ended",
        "live": "ended",
        "paused": "ended",
        "ended": "ended",
    },
}


def transition(campaign: Campaign, action: str, now: datetime) -> Campaign:
    """The campaign after `action`; repeating an action is a no-op, anything else refused.

    Launching before `starts_at` schedules the campaign; the scheduler `start`s it on time.
    """
    target = TRANSITIONS.get(action, {}).get(campaign.state)
    if target is None:
        raise InvalidTransition(campaign.id, campaign.state, action)
    if action == "launch" and campaign.ends_at is not None and campaign.ends_at <= now:
        raise InvalidTransition(campaign.id, "over (ends_at has passed)", action)
    if action == "launch" and target == "live" and campaign.starts_at and campaign.starts_at > now:
        target = "scheduled"
    if action == "start" and campaign.starts_at and campaign.starts_at > now:
        raise InvalidTransition(campaign.id, "not due yet", action)
    changes: dict[str, Any] = {"state": target, "updated_at": now}
    if target == "live" and campaign.state != "live":
        changes["launched_at"] = now
    return campaign.model_copy(update=changes)


def due_action(campaign: Campaign, now: datetime) -> str | None:
    """What the scheduler must do to `campaign` now: `start`, `end`, or nothing."""
    ending = campaign.state in ("scheduled", "live", "paused")
    if ending and campaign.ends_at is not None and campaign.ends_at <= now:
        return "end"
    if campaign.state == "scheduled" and (campaign.starts_at is None or campaign.starts_at <= now):
        return "start"
    return None


def build_offers(
    campaign: Campaign,
    now: datetime,
    bundle_expiry: datetime,
    *,
    variant: str | None = None,
    stock: Mapping[str, int] | None = None,
) -> list[Offer]:
    """Wire offers of one campaign (of one `variant` when given): defaults for the window
    come from the campaign; limited offers carry the stock left now. Offers of a variant
    weighted 0 go to nobody."""
    offers = []
    weights = campaign.weights
    for tpl in campaign.offers:
        if variant is not None and tpl.variant != variant:
            continue
        if weights.get(tpl.variant, 0.0) <= 0:
            continue
        fields = tpl.model_dump(exclude={"starts_at", "expires_at", "stock"})
        starts = tpl.starts_at or campaign.starts_at or campaign.launched_at or now
        expires = tpl.expires_at or campaign.ends_at or bundle_expiry
        fields.update(campaign_id=campaign.id, starts_at=starts, expires_at=expires)
        if campaign.holdout:
            fields["holdout"] = campaign.holdout
        if tpl.limited and tpl.stock is not None:
            fields["stock"] = (stock or {}).get(tpl.id, tpl.stock)
        if tpl.limited and starts > now:
            # sent ahead of its window (a live-sale wave): sealed until then (issue 19)
            fields["not_before"] = starts
        offers.append(Offer.model_validate(fields))
    return offers


def build_catalog(  # noqa: PLR0917 - kept positional for existing callers
    cohort: str,
    live: Iterable[Campaign],
    now: datetime,
    ttl: timedelta,
    revokes: Iterable[str] = (),
    stock: Mapping[str, Mapping[str, int]] | None = None,
) -> tuple[OfferBundle, dict[str, int]]:
    """The unsigned catalog of every live campaign's offers for `cohort`.

    Returns the bundle and the offers count per campaign in it. Highest priority first,
    capped at the bundle limit. The bundle lives while any of its campaigns runs, at most
    `ttl`; each offer carries its own window.
    """
    bundle_expiry = now + ttl
    candidates: list[Offer] = []
    ends: list[datetime] = []
    for campaign in live:
        if campaign.state != "live" or cohort not in campaign.push_cohorts:
            continue
        if campaign.ends_at is not None and campaign.ends_at <= now:
            continue
        candidates.extend(
            build_offers(campaign, now, bundle_expiry, stock=(stock or {}).get(campaign.id))
        )
        ends.append(campaign.ends_at or bundle_expiry)
    candidates = [o for o in candidates if o.expires_at > now]
    candidates.sort(key=lambda o: (-o.priority, o.campaign_id, o.id))
    offers = candidates[:MAX_OFFERS_PER_BUNDLE]
    per_campaign: dict[str, int] = {}
    for offer in offers:
        per_campaign[offer.campaign_id] = per_campaign.get(offer.campaign_id, 0) + 1
    expires = min(max(ends), bundle_expiry) if ends else bundle_expiry
    kept = {o.id for o in offers}
    bundle = OfferBundle(
        id=new_id(),
        issued_at=now,
        expires_at=expires,
        cohort=cohort,
        offers=offers,
        revokes=sorted({r for r in revokes if r not in kept})[:MAX_OFFERS_PER_BUNDLE],
    )
    return bundle, per_campaign


def offer_window(
    campaign: Campaign, offer: OfferOut, now: datetime
) -> tuple[datetime, datetime | None]:
    """(starts, expires) of an offer: its own window, else the campaign's (None: open end)."""
    starts = offer.starts_at or campaign.starts_at or campaign.launched_at or now
    return starts, offer.expires_at or campaign.ends_at


def needs_facts(campaign: Campaign) -> bool:
    """Whether deciding who the campaign reaches needs the device's reported facts."""
    return campaign.targeting is not None or "all" not in campaign.cohorts


def claim_refusal(
    campaign: Campaign, offer_id: str, device_id: str, facts: DeviceFacts | None, now: datetime
) -> str | None:
    """Why a device may not claim this offer (None: it may): the same audience, holdout,
    variant and window as the push, so a claim cannot reach past what was offered.

    `facts` may be None when `needs_facts(campaign)` is False.
    """
    offer = next((o for o in campaign.offers if o.id == offer_id), None)
    if offer is None:
        return "unknown offer"
    if needs_facts(campaign) and (
        facts is None or not selects(campaign.targeting, campaign.cohorts, facts, now)
    ):
        return "not targeted: this device is not in the campaign's audience"
    if in_holdout(device_id, campaign.id, campaign.holdout):
        return "not targeted: this device is in the campaign's holdout"
    weights = campaign.weights
    if weights.get(offer.variant, 0.0) <= 0:
        return "not offered: its variant has weight 0"
    if len(weights) > 1 and pick_variant(device_id, campaign.id, weights) != offer.variant:
        return "not offered: this device is in another variant"
    starts, expires = offer_window(campaign, offer, now)
    if now < starts:
        return "not started: the offer's window has not opened"
    if expires is not None and now >= expires:
        return "expired: the offer's window has closed"
    return None
