"""What the world's devices send: signal rates, the fleet's hourly load, scripted signals."""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.vocabulary import CATEGORIES
from simulators.world.core import World
from simulators.world.offers import _BASE_PRICE
from simulators.world.people import (
    _APPS,
    _C,
    _CAT,
    _CONSUMABLE_RATE,
    _DEVICE_SHARE,
    _GENRES,
    _KIND_MIX,
    _NEAR_PEAK_SHARE,
    _PROFILE,
    _TIER_RATE,
    CATEGORIZED_KINDS,
    FloatArray,
    Persona,
    _context_mix,
)


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


def local_minutes(  # noqa: PLR0917
    rng: np.random.Generator, peak: float, spread: float, n: int, first_day: int, days: int
) -> np.ndarray:
    """`n` local times, in minutes from a day's start, over days `[first_day, first_day +
    days)`: near the household's `peak` hour (spread `spread`), else anywhere in the day (the
    hour model of `logged_arrays` and `hourly_load`): when a household's devices are used."""
    day = rng.integers(first_day, first_day + days, n)
    near = rng.normal(peak, spread, n)
    hour = np.where(rng.random(n) < _NEAR_PEAK_SHARE, np.mod(near, 24.0), rng.uniform(0, 24, n))
    return np.asarray(day * 1440.0 + hour * 60.0, dtype=np.float64)
