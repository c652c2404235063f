"""The seeded world: households, offers and the hidden truth, from one seed in one order.

Personas and catalog are drawn from two streams spawned from the seed, always in this order
(the shipped model is rebuilt byte-identical from them): keep `make_world`'s draws as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.vocabulary import PROFILES
from simulators.world.offers import Catalog, _make_catalog
from simulators.world.people import (
    _PROFILE,
    APPLIANCES,
    FloatArray,
    Households,
    IntArray,
    Persona,
    _make_households,
)
from simulators.world.truth import _click_probability, _conversion_probabilities


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

    def outcome_probabilities(
        self, household: IntArray, offer: IntArray, hour: npt.NDArray[Any], profile: IntArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """The hidden truth of what follows a decision, per aligned row: P(click | shown),
        P(conversion | click), and P(conversion | not shown) (the household buys anyway)."""
        return _conversion_probabilities(
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
