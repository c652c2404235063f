"""The decision rules that need no arrays: reason codes, quiet hours, daily caps, holdout and
targeting rules, the campaign-diversity walk, and `offer_code`, every per-offer rule in one
place (the first reason that keeps an offer off a surface).

The full agent applies these rules to catalog columns (`agent.decide.policy`, numpy); a thin
device (`agent.decide.thin`) applies them offer by offer and never imports numpy. Property
tests hold the two forms equal (tests/agent/test_agent_policy.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from protocol.assign import in_holdout
from protocol.envelopes import Offer, Targeting
from protocol.vocabulary import CATEGORIES, LATER_OFFER_TYPES, OFFER_TYPES

REASONS: tuple[str, ...] = (
    "",
    "duplicate",
    "wrong_surface",
    "invalid",
    "unknown_category",
    "not_started",
    "expired",
    "targeting",
    "targeting_needs_personalization",
    "sold_out",
    "claim_refused",
    "household_cap",
    "cap_offer_day",
    "cap_campaign_day",
    "cap_surface_day",
    "cap_global_day",
    "quiet_hours",
    "over_budget",
    "non_finite_score",
    "holdout",
    "campaign_diversity",
    "below_limit",
    "below_min_score",
)
"""Why an offer was not shown; index 0 is "shown". A policy mask reports the first that applies."""
CODE = {name: i for i, name in enumerate(REASONS)}


@dataclass(frozen=True, slots=True)
class ScoreFloor:
    """The least model score an offer needs: the device's (the profile's `decisions.min_score`,
    or a cloud policy's over it) and campaigns' own, replacing it for their offers (issue 18)."""

    default: float | None = None
    by_campaign: Mapping[str, float] = field(default_factory=dict)

    def of(self, campaign_id: str) -> float | None:
        """The floor of one campaign's offers (None: no floor)."""
        return self.by_campaign.get(campaign_id, self.default)

    @property
    def unset(self) -> bool:
        """Whether no offer has a floor (the rule need not look at campaigns)."""
        return self.default is None and not self.by_campaign


NO_FLOOR = ScoreFloor()


def min_score_rule(
    floor: ScoreFloor, campaigns: Iterable[str], scored_by_model: bool
) -> list[float] | None:
    """The least score each offer (by its campaign id) needs to be shown, -inf where none, or
    None when the rule applies to no offer: it applies to model scores (this device's or the
    household coordinator's), never to the `priority / 100` fallback of a device without a
    model (another scale altogether)."""
    if not scored_by_model or floor.unset:
        return None
    return [-math.inf if (least := floor.of(c)) is None else least for c in campaigns]


CAP_KEYS = frozenset({"per_day", "campaign_per_day"})
"""`Offer.caps` keys enforced: impressions of the offer / of its campaign per local day."""


MINUTES_PER_DAY = 24 * 60


KNOWN_CATEGORIES = frozenset(CATEGORIES)
TYPE_CODE = {t: i for i, t in enumerate((*OFFER_TYPES, *LATER_OFFER_TYPES))}
"""Every offer type a device shows; the later ones (`price_cut`) set none of the model's
type inputs (those follow `OFFER_TYPES`)."""
NO_CAP = 2**63 - 1
"""No cap (the largest int64: the catalog's columns hold it too)."""


class Rows(Protocol):
    """A column by row number: a list, a tuple or a numpy array."""

    def __getitem__(self, row: int, /) -> Any: ...


def static_code(offer: Offer) -> int:
    """The reason that holds whatever the moment: `invalid`, `unknown_category`, or 0."""
    # pydantic checked these on the wire; this guards offers built without validation
    if not (
        offer.starts_at < offer.expires_at
        and 0.0 <= offer.discount <= 1.0
        and 0.0 <= offer.price < math.inf
        and 0 <= offer.priority <= 100
        and offer.type in TYPE_CODE
    ):
        return CODE["invalid"]
    if offer.category not in KNOWN_CATEGORIES:
        return CODE["unknown_category"]
    return 0


# ---------------------------------------------------------------------- quiet hours


@dataclass(frozen=True, slots=True)
class QuietWindow:
    """A daily quiet period in local time, `[start, end)` in minutes after midnight.

    `start > end` crosses midnight (22:00-07:00); `start == end` is empty.
    """

    start: int
    end: int

    def contains(self, minute: float) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def remaining(self, minute: float) -> float:
        """Minutes from `minute` (inside the window) to its end."""
        return (self.end - minute) % MINUTES_PER_DAY


def parse_hhmm(text: str) -> int:
    """`"22:30"` -> 1350; ValueError unless HH:MM with 00 <= HH <= 24 and MM < 60."""
    hours, sep, minutes = text.partition(":")
    if not sep or not (hours.isdigit() and minutes.isdigit()) or len(minutes) != 2:
        raise ValueError(f"{text!r} is not HH:MM")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or value > MINUTES_PER_DAY:
        raise ValueError(f"{text!r} is not a time of day")
    return value % MINUTES_PER_DAY


def quiet_remaining(local_minute: float, windows: Sequence[QuietWindow]) -> float | None:
    """Minutes until the quiet period around `local_minute` ends (overlapping windows chained);
    None when it is not quiet."""
    minute = local_minute % MINUTES_PER_DAY
    waited = 0.0
    for _ in range(2 * len(windows) + 2):
        inside = [w for w in windows if w.contains(minute)]
        if not inside:
            return waited if waited > 0 else None
        step = max(w.remaining(minute) for w in inside)
        waited += step
        # whole minutes are where windows end: snap away float dust (129.99999999999997)
        minute = round((minute + step) % MINUTES_PER_DAY, 6)
        if waited >= MINUTES_PER_DAY:
            return float(MINUTES_PER_DAY)  # always quiet: held for a day, then looked at again
    return waited


def held_until(now: datetime, local_hour: float, windows: Sequence[QuietWindow]) -> datetime | None:
    """When the quiet period around `now` ends (UTC), or None when offers may be shown now."""
    remaining = quiet_remaining(local_hour * 60.0, windows)
    return None if remaining is None else now + timedelta(minutes=remaining)


# ---------------------------------------------------------------------- frequency caps


@dataclass(frozen=True, slots=True)
class CapLimits:
    """The profile's caps (None: no cap); an offer's own `caps` add to them."""

    offer_per_day: int | None = None
    campaign_per_day: int | None = None
    surface_per_day: Mapping[str, int] = field(default_factory=dict)
    global_per_day: int | None = None
    by_campaign: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)
    """Campaign id -> (offer_per_day, campaign_per_day) replacing the two above for its offers
    (a cloud policy's campaign rules, issue 18; None: the limit above)."""


@dataclass(slots=True)
class CapCounts:
    """Impressions shown today (device-local day number `day`), by offer, campaign, surface."""

    day: int = 0
    offer: dict[str, int] = field(default_factory=dict)
    campaign: dict[str, int] = field(default_factory=dict)
    surface: dict[str, int] = field(default_factory=dict)
    total: int = 0
    version: int = 0

    def roll(self, day: int) -> None:
        """Start a new day: yesterday's impressions no longer count."""
        if day != self.day:
            self.day = day
            self.offer.clear()
            self.campaign.clear()
            self.surface.clear()
            self.total = 0
            self.version += 1

    def add(self, offer_id: str, campaign_id: str, surface: str, day: int, n: int = 1) -> None:
        self.roll(day)
        self.offer[offer_id] = self.offer.get(offer_id, 0) + n
        self.campaign[campaign_id] = self.campaign.get(campaign_id, 0) + n
        self.surface[surface] = self.surface.get(surface, 0) + n
        self.total += n
        self.version += 1

    def rows(self, offer_id: str, campaign_id: str, surface: str) -> list[tuple[str, str, int]]:
        """The persisted form of one impression: `(scope, key, day)` counters to bump."""
        return [
            ("offer", offer_id, self.day),
            ("campaign", campaign_id, self.day),
            ("surface", surface, self.day),
            ("global", "", self.day),
        ]

    @classmethod
    def load(cls, rows: Sequence[tuple[str, str, int, int]], day: int) -> CapCounts:
        """Today's counters from persisted `(scope, key, day, count)` rows."""
        counts = cls(day=day)
        for scope, key, row_day, n in rows:
            if row_day != day:
                continue
            if scope == "offer":
                counts.offer[key] = counts.offer.get(key, 0) + n
            elif scope == "campaign":
                counts.campaign[key] = counts.campaign.get(key, 0) + n
            elif scope == "surface":
                counts.surface[key] = counts.surface.get(key, 0) + n
            elif scope == "global":
                counts.total += n
        return counts


def surface_capped(counts: CapCounts, limits: CapLimits, surface: str) -> str | None:
    """`cap_surface_day` / `cap_global_day` when the whole surface is capped today, else None."""
    limit = limits.surface_per_day.get(surface)
    if limit is not None and counts.surface.get(surface, 0) >= limit:
        return "cap_surface_day"
    if limits.global_per_day is not None and counts.total >= limits.global_per_day:
        return "cap_global_day"
    return None


@dataclass(frozen=True, slots=True)
class HouseholdHold:
    """What the household's caps (issue 17) hold back on this device now: offers by id
    (shown on another device of the home within the window), or everything (`reason`:
    `household_quiet`, `household_day_cap`; `until` in epoch seconds)."""

    offers: frozenset[str] = frozenset()
    reason: str | None = None
    until: float | None = None

    def to_wire(self) -> dict[str, object]:
        return {"offers": sorted(self.offers), "reason": self.reason, "until": self.until}


# ---------------------------------------------------------------------- holdout


@dataclass(frozen=True, slots=True, eq=False)
class HoldoutRules:
    """A cloud policy's holdout (issue 18): `floor`, the least share held out of every
    campaign; `by_campaign`, a campaign's share replacing its offers' `holdout`."""

    floor: float = 0.0
    by_campaign: Mapping[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------- targeting


@dataclass(frozen=True, slots=True)
class Household:
    """What targeting may look at: the profile always; the rest only with personalization."""

    profile: str
    personalized: bool
    member_tier: int = 0
    owned: frozenset[str] = frozenset()
    seen: frozenset[str] = frozenset()


def targeting_code(hint: Targeting | None, household: Household) -> int:
    """The reason code an offer's targeting hint holds it back with for `household`, or 0."""
    if hint is None:
        return 0
    if hint.profiles and household.profile not in hint.profiles:
        return CODE["targeting"]
    if hint.personal and not household.personalized:
        return CODE["targeting_needs_personalization"]
    if (
        household.member_tier < hint.min_tier
        or (hint.owns_any and household.owned.isdisjoint(hint.owns_any))
        or (hint.seen_any and household.seen.isdisjoint(hint.seen_any))
    ):
        return CODE["targeting"]
    return 0


def offer_caps(offer: Offer, limits: CapLimits) -> tuple[int, int]:
    """(offer, campaign) impressions per day `offer` may have under its own caps and `limits`
    (`by_campaign` in place of the profile-wide two for its campaign); `NO_CAP`: none."""
    offer_cap = int(offer.caps.get("per_day", NO_CAP))
    camp_cap = int(offer.caps.get("campaign_per_day", NO_CAP))
    rule = limits.by_campaign.get(offer.campaign_id)
    per_offer = limits.offer_per_day if rule is None else rule[0]
    per_campaign = limits.campaign_per_day if rule is None else rule[1]
    if rule is not None:  # the rule's None falls back to the profile-wide limit
        per_offer = limits.offer_per_day if per_offer is None else per_offer
        per_campaign = limits.campaign_per_day if per_campaign is None else per_campaign
    if per_offer is not None:
        offer_cap = min(offer_cap, per_offer)
    if per_campaign is not None:
        camp_cap = min(camp_cap, per_campaign)
    return offer_cap, camp_cap


def holdout_share(offer: Offer, rules: HoldoutRules | None) -> float:
    """The share of devices `offer`'s campaign holds out under `rules` (None: the offer's own)."""
    if rules is None:
        return float(offer.holdout)
    share = rules.by_campaign.get(offer.campaign_id)
    return float(share) if share is not None else max(float(offer.holdout), rules.floor)


def offer_code(  # noqa: PLR0917  # one rule per line, in REASONS order
    offer: Offer,
    surface: str,
    now: datetime,
    household: Household,
    counts: CapCounts | None,
    limits: CapLimits,
    refused: frozenset[str],
    household_held: frozenset[str] = frozenset(),
) -> int:
    """The first reason code (`REASONS` order) that keeps `offer` off `surface` at `now`, 0 if
    none; duplicates are the caller's (`agent.decide.thin`). The per-offer form of
    `agent.decide.policy.filter_codes`."""
    if surface not in offer.surfaces:
        return CODE["wrong_surface"]
    static = static_code(offer)
    if static:
        return static
    if now < offer.starts_at:
        return CODE["not_started"]
    if now >= offer.expires_at:
        return CODE["expired"]
    targeted = targeting_code(offer.targeting, household)
    if targeted:
        return targeted
    if offer.limited and offer.stock == 0:
        return CODE["sold_out"]
    if offer.id in refused:
        return CODE["claim_refused"]
    if offer.id in household_held:
        return CODE["household_cap"]
    if counts is not None:
        offer_cap, camp_cap = offer_caps(offer, limits)
        if counts.offer.get(offer.id, 0) >= offer_cap:
            return CODE["cap_offer_day"]
        if counts.campaign.get(offer.campaign_id, 0) >= camp_cap:
            return CODE["cap_campaign_day"]
    return 0


def in_holdout_of(offer: Offer, device_id: str, rules: HoldoutRules | None) -> bool:
    """Whether `offer`'s campaign holds `device_id` out (`protocol.assign.in_holdout`)."""
    return in_holdout(device_id, offer.campaign_id, holdout_share(offer, rules))


# ---------------------------------------------------------------------- selection


@dataclass(frozen=True, slots=True)
class Selection:
    """Rows to show (best first), rows a holdout keeps off (logged as counterfactual), and the
    rows left out with a reason code (only those walked past; all of them when `explain`)."""

    shown: list[int]
    counterfactual: list[int]
    dropped: list[tuple[int, int]]


def select(
    order: Sequence[int],
    camp_code: Rows,
    held_out: Rows | None,
    limit: int,
    *,
    explain: bool = False,
) -> Selection:
    """Walk rows best first: at most one per campaign, at most `limit` shown.

    A row of a campaign holding this device out takes its place in the walk (its campaign is
    used up) but is not shown: it is returned in `counterfactual` when it would have been, and
    the next best row fills the slot. Without `explain` the walk stops once `limit` is reached.
    """
    shown: list[int] = []
    counterfactual: list[int] = []
    dropped: list[tuple[int, int]] = []
    campaigns: set[int] = set()
    diversity = CODE["campaign_diversity"]
    below = CODE["below_limit"]
    holdout = CODE["holdout"]
    for row in order:
        campaign = int(camp_code[row])
        if campaign in campaigns:
            dropped.append((row, diversity))
            continue
        if len(shown) >= limit:
            if not explain:
                break
            dropped.append((row, below))
            continue
        campaigns.add(campaign)
        if held_out is not None and held_out[row]:
            counterfactual.append(row)
            dropped.append((row, holdout))
        else:
            shown.append(row)
    return Selection(shown, counterfactual, dropped)
