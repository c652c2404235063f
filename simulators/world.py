"""The seeded synthetic world: households, an offer catalog and a hidden click model (numpy).

Everything here is pure and vectorised: `make_world(seed, households)` draws personas as
arrays (100,000 households take well under a second), `click_probability` is the ground
truth P(click | persona, offer, hour, profile), `usage_signals` scripts what one household
device sends to the real agent, and `logged_examples` produces what the gateway would
export after a uniform-random exploration policy showed offers: the features a device
computes from its own recent signals, and a label sampled from the ground truth.

The ground truth's parameters never leave this module in the logs: `models/` trains only
on `logged_examples` output (JSON lines), as it would on a real gateway export.

Over 400 lines on purpose: personas, catalog and ground truth are drawn from one seeded
stream in one order (the shipped model is rebuilt byte-identical from it); split across
modules, that order would be easy to break unnoticed.

Categories, offer types, profiles and feature names come from `protocol.vocabulary`, the
one list devices, models and this world share.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.vocabulary import CATEGORIES, FEATURE_NAMES_V2, OFFER_TYPES, PROFILES

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

CATEGORIZED_KINDS: tuple[str, ...] = ("app_open", "content_view", "search", "purchase")
APPLIANCES: tuple[str, ...] = ("purifier_filter", "water_filter")
"""Consumable categories; a household owning the appliance reports its consumable's level."""


UTC_OFFSET_HOURS = 8
"""Every shipped firmware profile runs in Asia/Shanghai (UTC+8, no daylight saving)."""
LOG_START = np.datetime64("2026-03-02T00:00:00", "ms")
"""Local midnight of the first logged day; logs span `LOG_DAYS` days from here."""
LOG_DAYS = 28
WINDOW_DAYS = 7

_C = len(CATEGORIES)
_CAT = {c: i for i, c in enumerate(CATEGORIES)}
_TYPE = {t: i for i, t in enumerate(OFFER_TYPES)}
_PROFILE = {p: i for i, p in enumerate(PROFILES)}
_APPLIANCE_CAT = np.array([_CAT[c] for c in APPLIANCES])

# ------------------------------------------------------------------ how devices are used
# Rows follow PROFILES; columns CATEGORIES (category weights) or CATEGORIZED_KINDS (kind mix).
_DEVICE_OWNED = np.array([0.5, 0.8, 0.95, 0.4])
_DEVICE_SHARE = np.array([0.6, 1.0, 1.2, 0.4])  # share of household activity per device
_CATEGORY_WEIGHT = np.array(
    [
        [2.0, 2.0, 0.5, 0.5, 2.0, 1.5, 1.0, 0.3, 0.5, 1.0],  # hub
        [0.5, 0.5, 3.0, 0.3, 0.7, 0.7, 0.5, 2.0, 1.0, 1.0],  # tv
        [0.8, 0.8, 1.0, 3.0, 1.0, 1.0, 1.5, 1.5, 1.0, 1.2],  # phone
        [0.5, 0.5, 0.5, 0.3, 1.5, 0.5, 1.0, 0.3, 3.0, 0.8],  # speaker
    ]
)
_KIND_MIX = np.array(
    [
        [0.5, 0.1, 0.2, 0.2],
        [0.25, 0.6, 0.1, 0.05],
        [0.35, 0.2, 0.25, 0.2],
        [0.3, 0.5, 0.15, 0.05],
    ]
)
_LINKED = np.array([0.95, 0.5, 0.7, 0.3])  # device sees the household's appliances
_KNOWS_TIER = np.array([0.4, 0.6, 0.9, 0.3])  # device's apps know the member tier
_NEAR_PEAK_SHARE = 0.7  # share of a household's activity drawn near its peak hour (local)
_CONSUMABLE_RATE = 1.0  # consumable_level reports per day per linked appliance
_TIER_RATE = 0.3  # member_tier reports per day on a device that knows the tier
_TIER_P = np.array([0.45, 0.3, 0.17, 0.08])
_OWNS_APPLIANCE = np.array([0.35, 0.45])

_APPS = ("mall", "mall", "video", "mall", "home", "mall", "grocer", "games", "music", "club")
_GENRES = ("howto", "howto", "drama", "review", "howto", "review", "food", "action", "pop", "news")

# ------------------------------------------------------------------ the catalog
_ALLOWED_TYPES: dict[str, tuple[str, ...]] = {
    "purifier_filter": ("replenishment", "coupon", "bundle", "group_buy"),
    "water_filter": ("replenishment", "coupon", "bundle", "group_buy"),
    "tv_streaming": ("content", "coupon", "membership_perk", "bundle"),
    "phone_accessories": ("coupon", "bundle", "group_buy"),
    "smart_home": ("coupon", "bundle", "group_buy"),
    "appliances": ("coupon", "bundle", "group_buy"),
    "groceries": ("replenishment", "coupon", "group_buy"),
    "games": ("content", "coupon", "bundle"),
    "music": ("content", "membership_perk", "coupon"),
    "membership": ("membership_perk", "coupon"),
}
_BASE_PRICE = np.array([199.0, 299.0, 30.0, 99.0, 299.0, 2999.0, 59.0, 68.0, 15.0, 99.0])
_DISCOUNT_RANGE = np.array(  # per OFFER_TYPES: (low, high)
    [[0.05, 0.4], [0.1, 0.3], [0.05, 0.2], [0.0, 0.2], [0.2, 0.5], [0.0, 0.1]]
)
_LIMITED_P = np.array([0.25, 0.05, 0.05, 0.05, 0.25, 0.05])

# ------------------------------------------------------------------ the hidden click model
_T_BASE = -3.6
_T_AFFINITY = 0.8  # on log(C * context affinity + 0.1)
_T_DISCOUNT = 3.0  # times (0.5 + price sensitivity)
_T_PRICE = 0.9  # times price sensitivity, on centred log price
_T_PRIORITY = 0.6
_T_LIMITED = 0.25
_T_TIER = 0.15
_T_PERK_TIER = 0.35
_T_NEED = 1.5  # any offer of a consumable category, times 1 - level
_T_REPLENISH_NEED = 2.5  # a replenishment offer, on top
_T_HOUR = 0.8  # times cos(distance of the hour from the household's peak)
_T_PROFILE_TYPE = np.array(  # rows PROFILES, columns OFFER_TYPES
    [
        [0.0, 0.1, 0.4, 0.0, 0.0, -0.3],
        [0.0, 0.0, -0.2, 0.2, -0.1, 0.5],
        [0.2, 0.0, 0.0, 0.1, 0.4, 0.0],
        [-0.3, -0.3, 0.1, 0.0, -0.4, 0.2],
    ]
)


@dataclass(frozen=True, slots=True, eq=False)
class Households:
    """Personas as arrays, one row per household (index = household number)."""

    affinity: FloatArray  # [H, C], rows sum to 1
    activity: FloatArray  # [H], signals per day on a device with share 1
    price_sensitivity: FloatArray  # [H], 0..1
    peak_hour: FloatArray  # [H], local hour of most activity
    hour_spread: FloatArray  # [H], hours
    tier: IntArray  # [H], 0..3
    owns: BoolArray  # [H, len(APPLIANCES)]
    level: FloatArray  # [H, len(APPLIANCES)], consumable level 0..1 (0 when not owned)
    devices: BoolArray  # [H, P], at least one per household
    linked: BoolArray  # [H, P], device sees the appliances' consumable levels
    knows_tier: BoolArray  # [H, P], device's apps know the member tier
    clickiness: FloatArray  # [H], hidden per-household propensity

    def __len__(self) -> int:
        return int(self.activity.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class Catalog:
    """Offers as arrays; `records()` gives them as dicts with `protocol.Offer` field names."""

    ids: tuple[str, ...]
    campaign_ids: tuple[str, ...]
    type_idx: IntArray
    category_idx: IntArray
    price: FloatArray
    discount: FloatArray
    priority: IntArray
    limited: BoolArray

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, offer_id: str) -> int:
        return self.ids.index(offer_id)

    def records(self) -> list[dict[str, Any]]:
        """Offer fields (no surfaces or validity times: the campaign decides those)."""
        return [
            {
                "id": self.ids[i],
                "campaign_id": self.campaign_ids[i],
                "type": OFFER_TYPES[self.type_idx[i]],
                "title": f"{OFFER_TYPES[self.type_idx[i]]} on {CATEGORIES[self.category_idx[i]]}",
                "category": CATEGORIES[self.category_idx[i]],
                "price": float(self.price[i]),
                "discount": float(self.discount[i]),
                "priority": int(self.priority[i]),
                "limited": bool(self.limited[i]),
            }
            for i in range(len(self))
        ]


@dataclass(frozen=True, slots=True)
class Persona:
    """One household, as scalars: what `usage_signals` and the household simulator need."""

    index: int
    affinity: tuple[float, ...]
    activity: float
    price_sensitivity: float
    peak_hour: float
    hour_spread: float
    tier: int
    consumables: dict[str, float]  # appliance category -> level, for owned appliances
    devices: tuple[str, ...]
    linked: tuple[str, ...]
    knows_tier: tuple[str, ...]

    @property
    def household_id(self) -> str:
        return f"hh{self.index:06d}"

    def device_id(self, profile: str) -> str:
        return f"{self.household_id}-{profile}"


@dataclass(frozen=True, slots=True, eq=False)
class World:
    seed: int
    households: Households
    catalog: Catalog

    def persona(self, index: int) -> Persona:
        h = self.households
        return Persona(
            index=index,
            affinity=tuple(h.affinity[index].tolist()),
            activity=float(h.activity[index]),
            price_sensitivity=float(h.price_sensitivity[index]),
            peak_hour=float(h.peak_hour[index]),
            hour_spread=float(h.hour_spread[index]),
            tier=int(h.tier[index]),
            consumables={
                c: float(h.level[index, a]) for a, c in enumerate(APPLIANCES) if h.owns[index, a]
            },
            devices=tuple(p for i, p in enumerate(PROFILES) if h.devices[index, i]),
            linked=tuple(p for i, p in enumerate(PROFILES) if h.linked[index, i]),
            knows_tier=tuple(p for i, p in enumerate(PROFILES) if h.knows_tier[index, i]),
        )

    def click_probability(
        self,
        household: IntArray,
        offer: IntArray,
        hour: npt.NDArray[np.floating[Any]] | npt.NDArray[np.integer[Any]],
        profile: IntArray,
    ) -> FloatArray:
        """The hidden ground truth, vectorised over aligned index arrays."""
        return _click_probability(
            self.households, self.catalog, household, offer, hour=hour, profile=profile
        )

    def p_click(self, household: int, offer_id: str, hour: float, profile: str) -> float:
        """The ground truth for one impression (what a simulated user does with a shown offer)."""
        return float(
            self.click_probability(
                np.array([household]),
                np.array([self.catalog.index(offer_id)]),
                np.array([hour]),
                np.array([_PROFILE[profile]]),
            )[0]
        )


def _streams(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def make_world(seed: int, households: int, offers: int = 64) -> World:
    """A world of `households` personas and `offers` offers, entirely determined by `seed`."""
    if households < 1 or offers < 1:
        raise ValueError("a world needs at least one household and one offer")
    hh_rng, cat_rng = _streams(seed, 2)
    return World(seed, _make_households(hh_rng, households), _make_catalog(cat_rng, offers))


def _make_households(rng: np.random.Generator, n: int) -> Households:
    affinity = rng.dirichlet(np.full(_C, 0.5), size=n)
    activity = rng.lognormal(np.log(8.0), 0.5, size=n)
    price_sensitivity = rng.beta(2.0, 2.0, size=n)
    shape = rng.random(n)
    peak = np.where(
        shape < 0.6,
        rng.normal(20.5, 1.5, n),
        np.where(shape < 0.85, rng.normal(8.0, 1.5, n), rng.uniform(0.0, 24.0, n)),
    )
    spread = rng.uniform(1.5, 4.0, n)
    tier = rng.choice(len(_TIER_P), size=n, p=_TIER_P)
    owns = rng.random((n, len(APPLIANCES))) < _OWNS_APPLIANCE
    level = np.where(owns, rng.random((n, len(APPLIANCES))), 0.0)
    devices = rng.random((n, len(PROFILES))) < _DEVICE_OWNED
    devices[~devices.any(axis=1), _PROFILE["phone"]] = True
    linked = devices & (rng.random((n, len(PROFILES))) < _LINKED)
    knows_tier = devices & (rng.random((n, len(PROFILES))) < _KNOWS_TIER)
    clickiness = rng.normal(0.0, 0.4, n)
    return Households(
        affinity=affinity,
        activity=activity,
        price_sensitivity=price_sensitivity,
        peak_hour=np.mod(peak, 24.0),
        hour_spread=spread,
        tier=tier.astype(np.int64),
        owns=owns,
        level=level,
        devices=devices,
        linked=linked,
        knows_tier=knows_tier,
        clickiness=clickiness,
    )


def _make_catalog(rng: np.random.Generator, n: int) -> Catalog:
    # Cycle through every allowed (category, type) pair so each type appears once n >= 31.
    pairs = [(_CAT[c], _TYPE[t]) for c, types in _ALLOWED_TYPES.items() for t in types]
    order = [pairs[i % len(pairs)] for i in range(n)]
    category = np.array([c for c, _ in order], dtype=np.int64)
    kind = np.array([t for _, t in order], dtype=np.int64)
    price = np.round(_BASE_PRICE[category] * rng.lognormal(0.0, 0.35, n), 2)
    low, high = _DISCOUNT_RANGE[kind, 0], _DISCOUNT_RANGE[kind, 1]
    discount = np.round(rng.uniform(low, high), 2)
    priority = rng.integers(20, 91, n).astype(np.int64)
    limited = rng.random(n) < _LIMITED_P[kind]
    return Catalog(
        ids=tuple(f"sim-offer-{i:03d}" for i in range(n)),
        campaign_ids=tuple(f"sim-{CATEGORIES[c]}" for c in category),
        type_idx=kind,
        category_idx=category,
        price=price,
        discount=discount,
        priority=priority,
        limited=limited,
    )


def _context_mix(affinity: FloatArray, profile: IntArray) -> FloatArray:
    """Category mix of one device's activity: household affinity shaped by the device class."""
    mix = affinity * _CATEGORY_WEIGHT[profile]
    return np.asarray(mix / mix.sum(axis=-1, keepdims=True), dtype=np.float64)


def _need(hh: Households, household: IntArray, category: IntArray) -> FloatArray:
    """1 - level of the household's consumable in `category` (0 when none is owned)."""
    need = np.zeros(household.shape[0])
    for a, cat in enumerate(_APPLIANCE_CAT):
        hit = (category == cat) & hh.owns[household, a]
        need[hit] = 1.0 - hh.level[household[hit], a]
    return need


def _click_probability(
    hh: Households,
    cat: Catalog,
    household: IntArray,
    offer: IntArray,
    *,
    hour: npt.NDArray[Any],
    profile: IntArray,
) -> FloatArray:
    category = cat.category_idx[offer]
    kind = cat.type_idx[offer]
    mix = _context_mix(hh.affinity[household], profile)
    affinity = mix[np.arange(household.shape[0]), category]
    ps = hh.price_sensitivity[household]
    tier = hh.tier[household]
    need = _need(hh, household, category)
    logit = (
        _T_BASE
        + hh.clickiness[household]
        + _T_AFFINITY * np.log(_C * affinity + 0.1)
        + _T_DISCOUNT * cat.discount[offer] * (0.5 + ps)
        - _T_PRICE * ps * (np.log1p(cat.price[offer]) - 4.5) / 2.0
        + _T_PRIORITY * (cat.priority[offer] / 100.0 - 0.5)
        + _T_LIMITED * cat.limited[offer]
        + _T_TIER * tier
        + _T_PERK_TIER * tier * (kind == _TYPE["membership_perk"])
        + need * (_T_NEED + _T_REPLENISH_NEED * (kind == _TYPE["replenishment"]))
        + _T_HOUR * np.cos(2 * np.pi * (hour - hh.peak_hour[household]) / 24)
        + _T_PROFILE_TYPE[profile, kind]
    )
    return np.asarray(1.0 / (1.0 + np.exp(-logit)), dtype=np.float64)


# ------------------------------------------------------------------ one device's signals


def daily_signal_rate(household: Persona, profile: str) -> float:
    """Signals per day `household`'s `profile` device sends on average: the rate
    `usage_signals` draws its mix from (usage, plus consumable levels and the member tier
    where that device reports them)."""
    rate = household.activity * float(_DEVICE_SHARE[_PROFILE[profile]])
    if profile in household.linked:
        rate += _CONSUMABLE_RATE * len(household.consumables)
    if profile in household.knows_tier:
        rate += _TIER_RATE
    return rate


def hourly_load(world: World, rng: np.random.Generator, draws: int = 20) -> FloatArray:
    """The fleet's activity per local hour (24 values, mean 1): the same hour model as
    `logged_arrays` (near each household's peak, else uniform), weighted by activity. Every
    shipped profile runs in one time zone, so this is also the load's shape in UTC."""
    hh = world.households
    household = np.repeat(np.arange(len(hh)), draws)
    near = np.round(rng.normal(hh.peak_hour[household], hh.hour_spread[household]))
    uniform = rng.integers(0, 24, household.size)
    hour = np.where(rng.random(household.size) < _NEAR_PEAK_SHARE, np.mod(near, 24), uniform)
    load = np.bincount(hour.astype(np.int64), weights=hh.activity[household], minlength=24)
    return np.asarray(load / load.mean(), dtype=np.float64)


def usage_signals(
    household: Persona, profile: str, rng: np.random.Generator, n: int
) -> list[dict[str, Any]]:
    """`n` scripted signals (`{"kind", "attrs"}`) from `household`'s `profile` device.

    Kinds and attrs are those of docs/architecture.md; the mix is the one `logged_examples`
    counts from, so features the real agent computes match what the model was trained on.
    """
    p = _PROFILE[profile]
    affinity = np.asarray(household.affinity, dtype=np.float64)[None, :]
    mix = _context_mix(affinity, np.array([p]))[0]
    rate = household.activity * _DEVICE_SHARE[p]
    # One row per (kind, category) with a category attr, then consumables, then the tier.
    labels: list[tuple[str, int]] = [(k, c) for k in CATEGORIZED_KINDS for c in range(_C)]
    rates = list((rate * _KIND_MIX[p][:, None] * mix[None, :]).ravel())
    if profile in household.linked:
        for category in household.consumables:
            labels.append(("consumable_level", _CAT[category]))
            rates.append(_CONSUMABLE_RATE)
    if profile in household.knows_tier:
        labels.append(("member_tier", -1))
        rates.append(_TIER_RATE)
    weights = np.asarray(rates) / np.sum(rates)
    picks = rng.choice(len(labels), size=n, p=weights)
    return [_signal(household, labels[i][0], labels[i][1], rng) for i in picks]


def _signal(household: Persona, kind: str, c: int, rng: np.random.Generator) -> dict[str, Any]:
    if kind == "member_tier":
        return {"kind": kind, "attrs": {"tier": household.tier}}
    category = CATEGORIES[c]
    attrs: dict[str, Any]
    if kind == "app_open":
        attrs = {"app": _APPS[c], "category": category}
    elif kind == "content_view":
        seconds = round(float(rng.lognormal(np.log(120.0), 0.8)), 1)
        attrs = {"genre": _GENRES[c], "category": category, "seconds": seconds}
    elif kind == "search":
        attrs = {"category": category, "query_len": int(rng.integers(2, 30))}
    elif kind == "purchase":
        amount = round(float(_BASE_PRICE[c] * rng.lognormal(0.0, 0.4)), 2)
        attrs = {"category": category, "amount": amount}
    else:  # consumable_level
        attrs = {"category": category, "level": round(household.consumables[category], 2)}
    return {"kind": kind, "attrs": attrs}


# ------------------------------------------------------------------ logged examples


@dataclass(frozen=True, slots=True, eq=False)
class LoggedArrays:
    """Logged impressions as aligned arrays; `features` columns follow `FEATURE_NAMES_V2`
    (v1's, then the household's as its coordinator would have served them)."""

    household: IntArray
    profile: IntArray
    offer: IntArray
    at: npt.NDArray[np.datetime64]  # UTC
    features: FloatArray
    click: BoolArray


def logged_arrays(
    world: World, households: Sequence[int] | IntArray, per_household: int, seed: int
) -> LoggedArrays:
    """`per_household` impressions for each listed household, on one of its devices chosen
    uniformly, of an offer chosen uniformly (an exploration policy), labelled by the truth.

    `seed` picks the log stream (with the world's seed): the same arguments, the same logs.
    """
    hh, cat = world.households, world.catalog
    rng = np.random.default_rng([seed, world.seed, 0x1065])
    household = np.repeat(np.asarray(households, dtype=np.int64), per_household)
    n = household.shape[0]
    rows = np.arange(n)

    owned = hh.devices[household]
    cumulative = np.cumsum(owned, axis=1) / owned.sum(axis=1, keepdims=True)
    profile = (rng.random(n)[:, None] >= cumulative).sum(axis=1).astype(np.int64)
    offer = rng.integers(0, len(cat), n).astype(np.int64)
    day = rng.integers(0, LOG_DAYS, n)
    near = np.round(rng.normal(hh.peak_hour[household], hh.hour_spread[household]))
    hour = np.where(
        rng.random(n) < _NEAR_PEAK_SHARE, np.mod(near, 24), rng.integers(0, 24, n)
    ).astype(np.int64)
    minute = rng.integers(0, 60, n)
    local = LOG_START + (day * 1440 + hour * 60 + minute).astype("timedelta64[m]")
    at = local - np.timedelta64(UTC_OFFSET_HOURS, "h")

    # The device's signals over the last 7 days, counted per offer category: a Poisson
    # process with uniform times (the same rates `usage_signals` samples from).
    category = cat.category_idx[offer]
    mix = _context_mix(hh.affinity[household], profile)[rows, category]
    daily = hh.activity[household] * _DEVICE_SHARE[profile] * mix
    appliance = np.zeros(n, dtype=bool)
    level = np.zeros(n)
    for a, cat_index in enumerate(_APPLIANCE_CAT):
        hit = (category == cat_index) & hh.owns[household, a] & hh.linked[household, profile]
        appliance |= hit
        level[hit] = np.round(hh.level[household[hit], a], 2)
    reports = rng.poisson(WINDOW_DAYS * _CONSUMABLE_RATE * appliance)
    count_7d = rng.poisson(WINDOW_DAYS * daily) + reports
    count_24h = rng.binomial(count_7d, 1.0 / WINDOW_DAYS)
    consumable_need = np.where(reports > 0, 1.0 - level, 0.0)
    tier_seen = hh.knows_tier[household, profile] & (rng.poisson(WINDOW_DAYS * _TIER_RATE, n) > 0)
    member_tier = np.where(tier_seen, hh.tier[household], 0)

    local_hour = hour + minute / 60.0  # as the agent computes it: fractional, local time
    angle = 2 * np.pi * local_hour / 24
    features = np.column_stack(
        [
            cat.discount[offer],
            np.log1p(cat.price[offer]),
            cat.priority[offer] / 100.0,
            cat.limited[offer].astype(np.float64),
            np.eye(len(OFFER_TYPES))[cat.type_idx[offer]],
            count_24h,
            count_7d,
            consumable_need,
            member_tier,
            np.sin(angle),
            np.cos(angle),
            np.eye(len(PROFILES))[profile],
        ]
    ).astype(np.float64)
    p = world.click_probability(household, offer, local_hour, profile)
    click = rng.random(n) < p
    # Drawn after the labels: the v1 columns and labels stay what they were before v2.
    features = np.column_stack(
        [features, _household_columns(hh, rng, household, profile, category, count_24h)]
    )
    return LoggedArrays(household, profile, offer, at, features, click)


def _household_columns(  # noqa: PLR0917 - the aligned arrays `logged_arrays` already drew
    hh: Households,
    rng: np.random.Generator,
    household: IntArray,
    profile: IntArray,
    category: IntArray,
    count_24h: IntArray,
) -> FloatArray:
    """The `household.*` features of each impression, as the household's coordinator holds
    them: the appliances post their consumable levels to it directly (whichever device shows
    the offer), every device of the home adds its last 24 h of signals in the category, the
    devices it saw, the member tier if any device's apps know it."""
    n = household.shape[0]
    rows = np.arange(n)
    owned = hh.devices[household]  # [n, P]
    others = np.zeros(n)
    for q in range(len(PROFILES)):
        other = owned[:, q] & (profile != q)
        mix_q = _context_mix(hh.affinity[household], np.full(n, q))[rows, category]
        others += np.where(other, hh.activity[household] * _DEVICE_SHARE[q] * mix_q, 0.0)
    need = np.zeros(n)
    for a, cat_index in enumerate(_APPLIANCE_CAT):
        hit = (category == cat_index) & hh.owns[household, a]
        need[hit] = 1.0 - np.round(hh.level[household[hit], a], 2)
    count = count_24h + rng.poisson(others)
    tier = np.where(hh.knows_tier[household].any(axis=1), hh.tier[household], 0)
    return np.column_stack([need, count, owned.sum(axis=1), tier]).astype(np.float64)


_INTEGER_FEATURES = frozenset(
    j
    for j, name in enumerate(FEATURE_NAMES_V2)
    if name.startswith(("offer.type.", "ctx.profile.", "user.category_count"))
    or name
    in (
        "offer.limited",
        "user.member_tier",
        "household.category_count_24h",
        "household.active_devices",
        "household.member_tier",
    )
)


def logged_examples(
    world: World, households: Sequence[int] | IntArray, per_household: int, seed: int
) -> list[dict[str, Any]]:
    """`logged_arrays` in the gateway export form: one dict per impression, for JSON lines:
    `{"device_id", "profile", "offer_id", "campaign_id", "features", "kind", "at"}`."""
    logs = logged_arrays(world, households, per_household, seed)
    columns = [
        logs.features[:, j].astype(np.int64).tolist()
        if j in _INTEGER_FEATURES
        else np.round(logs.features[:, j], 6).tolist()
        for j in range(len(FEATURE_NAMES_V2))
    ]
    rows = list(zip(*columns, strict=True))
    at = np.datetime_as_string(logs.at, unit="ms").tolist()
    cat = world.catalog
    out = []
    for i, (h, p, o, c) in enumerate(
        zip(
            logs.household.tolist(),
            logs.profile.tolist(),
            logs.offer.tolist(),
            logs.click.tolist(),
            strict=True,
        )
    ):
        out.append(
            {
                "device_id": f"hh{h:06d}-{PROFILES[p]}",
                "profile": PROFILES[p],
                "offer_id": cat.ids[o],
                "campaign_id": cat.campaign_ids[o],
                "features": dict(zip(FEATURE_NAMES_V2, rows[i], strict=True)),
                "kind": "click" if c else "impression",
                "at": at[i] + "Z",
            }
        )
    return out


def to_jsonl(examples: Iterable[dict[str, Any]]) -> Iterator[str]:
    """JSON lines (compact, newline-terminated) of logged examples."""
    for example in examples:
        yield json.dumps(example, separators=(",", ":")) + "\n"
