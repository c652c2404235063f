"""What the gateway would export after an exploration policy showed the world's offers.

`logged_arrays` draws impressions of uniformly chosen offers on each household's devices, the
features a device computes from its own recent signals (and its household's coordinator), and
a label sampled from the ground truth; `logged_examples` turns them into the export's JSON form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.vocabulary import FEATURE_NAMES_V2, OFFER_TYPES, PROFILES
from simulators.world.core import World
from simulators.world.people import (
    _APPLIANCE_CAT,
    _CONSUMABLE_RATE,
    _DEVICE_SHARE,
    _NEAR_PEAK_SHARE,
    _TIER_RATE,
    LOG_DAYS,
    LOG_START,
    UTC_OFFSET_HOURS,
    WINDOW_DAYS,
    BoolArray,
    FloatArray,
    Households,
    IntArray,
    _context_mix,
)


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
