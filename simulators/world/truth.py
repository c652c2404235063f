"""The world's hidden ground truth: P(click | persona, offer, hour, profile), vectorised.

Its parameters never leave the world in the logs: `models/` trains only on what
`simulators.world.logs` writes, as it would on a real gateway export.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from simulators.world.offers import Catalog
from simulators.world.people import (
    _APPLIANCE_CAT,
    _C,
    _TYPE,
    FloatArray,
    Households,
    IntArray,
    _context_mix,
)

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


# ------------------------------------------------------------------ after the click
_B_BASE = -1.2  # P(buy | click) at no need, mean price sensitivity, the mean price
_B_NEED = 1.5  # times 1 - level, for an offer of the household's consumable's category
_B_DISCOUNT = 2.0  # times price sensitivity
_B_PRICE = 0.6  # times price sensitivity, on centred log price
_ORGANIC = 0.2
"""Share of the conversions a shown offer brings that would have happened without it (the
household buys the item anyway): what a holdout measures the uplift against."""


def _buy_probability(
    hh: Households, cat: Catalog, household: IntArray, offer: IntArray
) -> FloatArray:
    """P(conversion | click): a clicked offer is bought more often when the household needs
    it, and by the price sensitive when it is cheap or discounted."""
    category = cat.category_idx[offer]
    ps = hh.price_sensitivity[household]
    logit = (
        _B_BASE
        + _B_NEED * _need(hh, household, category)
        + _B_DISCOUNT * ps * cat.discount[offer]
        - _B_PRICE * ps * (np.log1p(cat.price[offer]) - 4.5)
    )
    return np.asarray(1.0 / (1.0 + np.exp(-logit)), dtype=np.float64)


def _conversion_probabilities(
    hh: Households,
    cat: Catalog,
    household: IntArray,
    offer: IntArray,
    *,
    hour: npt.NDArray[Any],
    profile: IntArray,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(P(click | shown), P(buy | click), P(conversion | not shown)) per aligned row."""
    click = _click_probability(hh, cat, household, offer, hour=hour, profile=profile)
    buy = _buy_probability(hh, cat, household, offer)
    return click, buy, _ORGANIC * click * buy
