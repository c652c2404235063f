"""The world's households: personas as arrays, how their devices are used, and their draw.

Pure numpy. One row per household; `Persona` is one row as scalars (what the household
simulator and `usage_signals` need).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol.vocabulary import CATEGORIES, OFFER_TYPES, PROFILES

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


def _context_mix(affinity: FloatArray, profile: IntArray) -> FloatArray:
    """Category mix of one device's activity: household affinity shaped by the device class."""
    mix = affinity * _CATEGORY_WEIGHT[profile]
    return np.asarray(mix / mix.sum(axis=-1, keepdims=True), dtype=np.float64)
