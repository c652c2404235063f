"""The held offers as columns: numpy arrays built once per catalog change, read by every decision.

A `Catalog` is immutable. Its rows are in tie order, `(-priority, id)`, so a stable sort of
scores breaks ties by priority, then id, with no per-offer Python at decision time. Everything a
decision needs about an offer (times, surfaces, campaign, category, offer-side model inputs,
stock, holdout share, caps, static validity) is a column here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from protocol.assign import in_holdout
from protocol.envelopes import Offer
from protocol.vocabulary import CATEGORIES, OFFER_TYPES

__all__ = ["CAP_KEYS", "REASONS", "Catalog", "build_catalog"]

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
)
"""Why an offer was not shown; index 0 is "shown". A policy mask reports the first that applies."""
CODE = {name: i for i, name in enumerate(REASONS)}

CAP_KEYS = frozenset({"per_day", "campaign_per_day"})
"""`Offer.caps` keys enforced: impressions of the offer / of its campaign per local day."""

_KNOWN_CATEGORIES = frozenset(CATEGORIES)
_TYPE_CODE = {t: i for i, t in enumerate(OFFER_TYPES)}
_NO_CAP = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True, eq=False)
class Catalog:
    """Columns of a set of offers (rows in `(-priority, id)` order; duplicates flagged)."""

    offers: tuple[Offer, ...]
    version: int
    index: Mapping[str, int]
    starts: np.ndarray  # epoch seconds
    expires: np.ndarray
    priority: np.ndarray  # float64, 0..100
    static_code: np.ndarray  # int8 reason code that holds whatever the moment (0: fine)
    categories: tuple[str, ...]
    cat_code: np.ndarray  # intp into `categories`
    campaigns: tuple[str, ...]
    camp_code: np.ndarray  # intp into `campaigns`
    type_code: np.ndarray  # intp into OFFER_TYPES (-1: unknown)
    discount: np.ndarray
    price: np.ndarray
    limited: np.ndarray  # bool
    sold_out: np.ndarray  # bool: limited with stock 0 when signed
    holdout_share: np.ndarray
    cap_offer_day: np.ndarray  # int64, _NO_CAP when none
    cap_campaign_day: np.ndarray
    targeted: tuple[int, ...]  # rows with targeting hints (few)
    surfaces: Mapping[str, np.ndarray]
    source: np.ndarray  # intp: the position of each row in the sequence it was built from
    _holdout: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offers)

    def surface_mask(self, surface: str) -> np.ndarray:
        got = self.surfaces.get(surface)
        return got if got is not None else np.zeros(len(self.offers), dtype=bool)

    def holdout_mask(self, device_id: str) -> np.ndarray:
        """Rows whose campaign holds this device out (`protocol.assign.in_holdout`), cached."""
        mask = self._holdout.get(device_id)
        if mask is None:
            mask = np.fromiter(
                (
                    in_holdout(device_id, o.campaign_id, float(share))
                    for o, share in zip(self.offers, self.holdout_share.tolist(), strict=True)
                ),
                dtype=bool,
                count=len(self.offers),
            )
            if len(self._holdout) > 8:
                self._holdout.clear()
            self._holdout[device_id] = mask
        return mask

    def rows(self, ids: Sequence[str] | frozenset[str]) -> np.ndarray:
        """A boolean row mask of the given offer ids (unknown ids ignored)."""
        mask = np.zeros(len(self.offers), dtype=bool)
        for oid in ids:
            row = self.index.get(oid)
            if row is not None:
                mask[row] = True
        return mask


def _static_code(offer: Offer) -> int:
    # pydantic checked these on the wire; this guards offers built without validation
    if not (
        offer.starts_at < offer.expires_at
        and 0.0 <= offer.discount <= 1.0
        and 0.0 <= offer.price < math.inf
        and 0 <= offer.priority <= 100
        and offer.type in _TYPE_CODE
    ):
        return CODE["invalid"]
    if offer.category not in _KNOWN_CATEGORIES:
        return CODE["unknown_category"]
    return 0


def _cap(caps: Mapping[str, int], key: str) -> int:
    value = caps.get(key)
    return _NO_CAP if value is None else int(value)


def build_catalog(offers: Sequence[Offer], version: int = 0) -> Catalog:
    """Columns of `offers`; a repeated id keeps its first occurrence, later ones are `duplicate`.

    Per-offer Python runs here, once per catalog change, never per decision.
    """
    order = sorted(range(len(offers)), key=lambda i: (-offers[i].priority, offers[i].id, i))
    first_seen: dict[str, int] = {}
    for i in range(len(offers)):
        first_seen.setdefault(offers[i].id, i)
    rows = tuple(offers[i] for i in order)
    n = len(rows)
    static = np.zeros(n, dtype=np.int8)
    index: dict[str, int] = {}
    surfaces: dict[str, np.ndarray] = {}
    categories: dict[str, int] = {}
    campaigns: dict[str, int] = {}
    cat_code = np.empty(n, dtype=np.intp)
    camp_code = np.empty(n, dtype=np.intp)
    targeted: list[int] = []
    for row, (i, offer) in enumerate(zip(order, rows, strict=True)):
        if first_seen[offer.id] != i:
            static[row] = CODE["duplicate"]
        else:
            index[offer.id] = row
            static[row] = _static_code(offer)
        for surface in offer.surfaces:
            mask = surfaces.get(surface)
            if mask is None:
                mask = surfaces[surface] = np.zeros(n, dtype=bool)
            mask[row] = True
        cat_code[row] = categories.setdefault(offer.category, len(categories))
        camp_code[row] = campaigns.setdefault(offer.campaign_id, len(campaigns))
        if offer.targeting is not None:
            targeted.append(row)
    # a wrong surface outranks field problems (the order `agent.decide.ranking.eligibility` reports)
    return Catalog(
        offers=rows,
        version=version,
        index=MappingProxyType(index),
        starts=np.array([o.starts_at.timestamp() for o in rows], dtype=np.float64),
        expires=np.array([o.expires_at.timestamp() for o in rows], dtype=np.float64),
        priority=np.array([o.priority for o in rows], dtype=np.float64),
        static_code=static,
        categories=tuple(categories),
        cat_code=cat_code,
        campaigns=tuple(campaigns),
        camp_code=camp_code,
        type_code=np.array([_TYPE_CODE.get(o.type, -1) for o in rows], dtype=np.intp),
        discount=np.array([o.discount for o in rows], dtype=np.float64),
        price=np.array([o.price for o in rows], dtype=np.float64),
        limited=np.array([o.limited for o in rows], dtype=bool),
        sold_out=np.array([o.limited and o.stock == 0 for o in rows], dtype=bool),
        holdout_share=np.array([o.holdout for o in rows], dtype=np.float64),
        cap_offer_day=np.array([_cap(o.caps, "per_day") for o in rows], dtype=np.int64),
        cap_campaign_day=np.array([_cap(o.caps, "campaign_per_day") for o in rows], dtype=np.int64),
        targeted=tuple(targeted),
        surfaces=MappingProxyType(surfaces),
        source=np.array(order, dtype=np.intp),
    )


NO_CAP = _NO_CAP
