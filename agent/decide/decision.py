"""What a decision is, whatever ranked it: consent, the decision and its ranked offers, the
policy state it is made under, `eligibility` (the per-offer form of the catalog's time,
surface and validity rules) and the reasons a ranked offer carries. No numpy: a thin device
(`agent.decide.thin`) decides with these alone; `agent.decide.ranking` re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.decide.rules import CapCounts, CapLimits, HoldoutRules, QuietWindow, ScoreFloor
from agent.features.context import UserContext
from protocol.envelopes import Offer

MAX_LIMIT = 50
CONSUMABLE_LOW = 0.8
"""`consumable_need` above which an offer of that category carries the reason `consumable_low`."""


@dataclass(frozen=True, slots=True)
class Consent:
    """The household's consent per purpose (absent means refused)."""

    analytics: bool = False
    personalization: bool = False
    marketing: bool = False


@dataclass(frozen=True, slots=True)
class RankedOffer:
    """One offer the device may show, with the score it was ranked by and why."""

    offer: Offer
    score: float
    reasons: tuple[str, ...]
    features: tuple[float, ...] | None = None
    """The scaled model inputs this offer was scored with (logged with its outcomes)."""

    def to_json(self) -> dict[str, Any]:
        """The offer as JSON plus `score` and `reasons` (one item of `GET /v1/offers`)."""
        body = self.offer.model_dump(mode="json")
        body["score"] = self.score
        body["reasons"] = list(self.reasons)
        return body


@dataclass(frozen=True, slots=True)
class Decision:
    """Ranked offers (best first), the offers left out with a reason, the model version used."""

    ranked: list[RankedOffer]
    filtered: list[tuple[str, str]]
    model_version: int | None
    counterfactual: list[RankedOffer] = field(default_factory=list)
    """Offers a holdout kept off the surface that would have been shown (logged, not shown)."""
    held_until: datetime | None = None
    """Set in quiet hours: nothing is shown before this moment (UTC)."""


def eligibility(
    offers: Sequence[Offer], surface: str, now: datetime
) -> tuple[list[Offer], list[tuple[str, str]]]:
    """Split `offers` into those showable on `surface` at `now`, and `(offer_id, reason)` pairs.

    Reasons: `duplicate` (an id seen earlier in `offers`), `wrong_surface`, `invalid` (fields out
    of range or `starts_at >= expires_at`), `not_started` (now < starts_at), `expired`
    (now >= expires_at).
    """
    eligible: list[Offer] = []
    filtered: list[tuple[str, str]] = []
    seen: set[str] = set()
    keep = eligible.append
    drop = filtered.append
    inf = math.inf
    for offer in offers:  # the hot loop of a decision: kept flat on purpose
        oid = offer.id
        if oid in seen:
            drop((oid, "duplicate"))
            continue
        seen.add(oid)
        starts_at = offer.starts_at
        expires_at = offer.expires_at
        if surface not in offer.surfaces:
            drop((oid, "wrong_surface"))
        elif not (
            # pydantic checked these on the wire; this guards offers built without validation
            starts_at < expires_at
            and 0.0 <= offer.discount <= 1.0
            and 0.0 <= offer.price < inf
            and 0 <= offer.priority <= 100
        ):
            drop((oid, "invalid"))
        elif now < starts_at:
            drop((oid, "not_started"))
        elif now >= expires_at:
            drop((oid, "expired"))
        else:
            keep(offer)
    return eligible, filtered


@dataclass(frozen=True, slots=True, eq=False)
class Situation:
    """What a decision knows besides the catalog and the user context: policy state."""

    device_id: str = ""
    caps: CapCounts | None = None
    limits: CapLimits = field(default_factory=CapLimits)
    quiet: tuple[QuietWindow, ...] = ()
    refused: frozenset[str] = frozenset()
    """Offer ids whose claim the gateway refused (sold out): not offered again."""
    household_held: frozenset[str] = frozenset()
    """Offer ids the household's caps keep off this device now (`HouseholdHold.offers`: shown
    on another device of the home within the window), filtered as `household_cap`."""
    holdout: HoldoutRules | None = None
    """A cloud policy's holdout shares (issue 18); None: the offers' own."""
    min_score: float | None = None
    """The device's least model score (the profile's `decisions.min_score`, or a cloud
    policy's): a model-scored offer below it is not shown (`below_min_score`); None: every
    eligible offer up to the limit (`rules.min_score_rule`)."""
    campaign_min_score: Mapping[str, float] = field(default_factory=dict)
    """Campaigns' own least scores from a cloud policy, replacing `min_score` for their offers."""

    @property
    def floor(self) -> ScoreFloor:
        """`min_score` and `campaign_min_score` as the rule reads them."""
        return ScoreFloor(self.min_score, self.campaign_min_score)


def reasons_for(offer: Offer, ctx: UserContext) -> tuple[str, ...]:
    if not ctx.personalized:
        return ()
    reasons: tuple[str, ...] = ()
    if ctx.category_24h.get(offer.category, 0) > 0:
        reasons += ("category_affinity",)
    if ctx.consumable_need.get(offer.category, 0.0) > CONSUMABLE_LOW:
        reasons += ("consumable_low",)
    home = ctx.household
    if home is not None and home.consumable_need.get(offer.category, 0.0) > CONSUMABLE_LOW:
        reasons += ("household_consumable_low",)  # an appliance elsewhere in the home
    return reasons
