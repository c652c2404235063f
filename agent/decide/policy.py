"""Decision policy as pure functions over catalog columns: eligibility, caps, quiet hours, holdout,
diversity. No I/O, no clock: callers pass the moment and the counts.

Two forms of the same rules: `eligible_mask` (the hot path: a few vectorised numpy operations)
and `filter_codes` (for `explain`: the first reason, per offer, that keeps it off the surface).
Property tests hold them equal to each other and to a per-offer reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from agent.decide.catalog import CODE, Catalog
from protocol.assign import in_holdout

MINUTES_PER_DAY = 24 * 60


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


@dataclass(frozen=True, slots=True, eq=False)
class CapArrays:
    """A catalog's per-row view of today's counts and limits (rebuilt when either changes)."""

    offer_left: np.ndarray  # bool: the offer may still be shown today
    campaign_left: np.ndarray  # bool: its campaign may still be shown today


_cap_cache: dict[int, tuple[object, int, int, CapArrays, object]] = {}


def cap_arrays(catalog: Catalog, counts: CapCounts, limits: CapLimits) -> CapArrays:
    """Which rows are under their offer and campaign caps; cached per catalog and counts."""
    key = id(catalog)
    cached = _cap_cache.get(key)
    if (
        cached is not None
        and cached[0] is catalog
        and cached[1] == counts.version
        and cached[2] == id(counts)
        and cached[4] is limits
    ):
        return cached[3]
    n = len(catalog)
    offer_seen = np.zeros(n, dtype=np.int64)
    for oid, shown in counts.offer.items():
        row = catalog.index.get(oid)
        if row is not None:
            offer_seen[row] = shown
    camp_index = {c: i for i, c in enumerate(catalog.campaigns)}
    camp_seen = np.zeros(len(catalog.campaigns), dtype=np.int64)
    for cid, shown in counts.campaign.items():
        j = camp_index.get(cid)
        if j is not None:
            camp_seen[j] = shown
    offer_cap = catalog.cap_offer_day
    if limits.offer_per_day is not None:
        offer_cap = np.minimum(offer_cap, limits.offer_per_day)
    camp_cap = catalog.cap_campaign_day
    if limits.campaign_per_day is not None:
        camp_cap = np.minimum(camp_cap, limits.campaign_per_day)
    if limits.by_campaign:
        offer_cap, camp_cap = _campaign_caps(catalog, limits, offer_cap, camp_cap)
    arrays = CapArrays(offer_seen < offer_cap, camp_seen[catalog.camp_code] < camp_cap)
    if len(_cap_cache) > 64:
        _cap_cache.clear()
    _cap_cache[key] = (catalog, counts.version, id(counts), arrays, limits)
    return arrays


def _campaign_caps(
    catalog: Catalog, limits: CapLimits, offer_cap: np.ndarray, camp_cap: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row offer and campaign caps with `limits.by_campaign` in place of the profile-wide
    limits for the rows of those campaigns (the offers' own caps still apply)."""
    offer_cap = offer_cap.copy()
    camp_cap = camp_cap.copy()
    for j, cid in enumerate(catalog.campaigns):
        rule = limits.by_campaign.get(cid)
        if rule is None:
            continue
        rows = catalog.camp_code == j
        if rule[0] is not None:
            offer_cap[rows] = np.minimum(catalog.cap_offer_day[rows], rule[0])
        if rule[1] is not None:
            camp_cap[rows] = np.minimum(catalog.cap_campaign_day[rows], rule[1])
    return offer_cap, camp_cap


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


_holdout_cache: dict[tuple[int, str, int], tuple[object, object, np.ndarray]] = {}


def holdout_rows(catalog: Catalog, device_id: str, rules: HoldoutRules | None) -> np.ndarray:
    """Rows whose campaign holds this device out, under `rules` (the offers' own shares when
    None: `Catalog.holdout_mask`). Cached per catalog, device and rules."""
    if rules is None or (rules.floor <= 0 and not rules.by_campaign):
        return catalog.holdout_mask(device_id)
    key = (id(catalog), device_id, id(rules))
    cached = _holdout_cache.get(key)
    if cached is not None and cached[0] is catalog and cached[1] is rules:
        return cached[2]
    shares = np.maximum(catalog.holdout_share, rules.floor)
    for j, cid in enumerate(catalog.campaigns):
        share = rules.by_campaign.get(cid)
        if share is not None:
            shares[catalog.camp_code == j] = share
    mask = np.fromiter(
        (
            in_holdout(device_id, o.campaign_id, float(share))
            for o, share in zip(catalog.offers, shares.tolist(), strict=True)
        ),
        dtype=bool,
        count=len(catalog.offers),
    )
    if len(_holdout_cache) > 16:
        _holdout_cache.clear()
    _holdout_cache[key] = (catalog, rules, mask)
    return mask


# ---------------------------------------------------------------------- eligibility


@dataclass(frozen=True, slots=True)
class Household:
    """What targeting may look at: the profile always; the rest only with personalization."""

    profile: str
    personalized: bool
    member_tier: int = 0
    owned: frozenset[str] = frozenset()
    seen: frozenset[str] = frozenset()


def targeting_codes(catalog: Catalog, household: Household) -> dict[int, int]:
    """Rows held back by their targeting hints, with the reason code (a handful of rows)."""
    out: dict[int, int] = {}
    for row in catalog.targeted:
        hint = catalog.offers[row].targeting
        if hint is None:
            continue
        if hint.profiles and household.profile not in hint.profiles:
            out[row] = CODE["targeting"]
        elif hint.personal and not household.personalized:
            out[row] = CODE["targeting_needs_personalization"]
        elif (
            household.member_tier < hint.min_tier
            or (hint.owns_any and household.owned.isdisjoint(hint.owns_any))
            or (hint.seen_any and household.seen.isdisjoint(hint.seen_any))
        ):
            out[row] = CODE["targeting"]
    return out


@dataclass(frozen=True, slots=True, eq=False)
class Gate:
    """Everything but the catalog that decides eligibility at one moment."""

    surface: str
    now: float  # epoch seconds
    household: Household
    caps: CapArrays | None = None
    refused: np.ndarray | None = None  # rows whose claim was refused (sold out at the gateway)
    household_held: np.ndarray | None = None  # rows the household's caps keep off (issue 17)


def eligible_mask(catalog: Catalog, gate: Gate) -> np.ndarray:
    """Rows showable on `gate.surface` at `gate.now` (time window, surface, validity, targeting,
    stock, claims, offer and campaign caps). Vectorised; equal to `filter_codes(...) == 0`."""
    mask: np.ndarray = catalog.surface_mask(gate.surface) & (catalog.static_code == 0)
    mask &= catalog.starts <= gate.now
    mask &= catalog.expires > gate.now
    mask &= ~catalog.sold_out
    if gate.refused is not None:
        mask &= ~gate.refused
    if gate.household_held is not None:
        mask &= ~gate.household_held
    if gate.caps is not None:
        mask &= gate.caps.offer_left
        mask &= gate.caps.campaign_left
    if catalog.targeted:
        for row in targeting_codes(catalog, gate.household):
            mask[row] = False
    return mask


def filter_codes(catalog: Catalog, gate: Gate) -> np.ndarray:
    """Per row, the first reason code (`catalog.REASONS`) that keeps it off, 0 if none."""
    codes = np.zeros(len(catalog), dtype=np.int8)
    # assigned from the least to the most important: the first reason in REASONS order wins
    if gate.caps is not None:
        codes[~gate.caps.campaign_left] = CODE["cap_campaign_day"]
        codes[~gate.caps.offer_left] = CODE["cap_offer_day"]
    if gate.household_held is not None:
        codes[gate.household_held] = CODE["household_cap"]
    if gate.refused is not None:
        codes[gate.refused] = CODE["claim_refused"]
    codes[catalog.sold_out] = CODE["sold_out"]
    for row, code in targeting_codes(catalog, gate.household).items():
        codes[row] = code
    codes[catalog.expires <= gate.now] = CODE["expired"]
    codes[catalog.starts > gate.now] = CODE["not_started"]
    static = catalog.static_code
    codes[(static != 0) & (static != CODE["duplicate"])] = static[
        (static != 0) & (static != CODE["duplicate"])
    ]
    codes[~catalog.surface_mask(gate.surface)] = CODE["wrong_surface"]
    codes[static == CODE["duplicate"]] = CODE["duplicate"]
    return codes


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
    camp_code: Sequence[int] | np.ndarray,
    held_out: np.ndarray | None,
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
