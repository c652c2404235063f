"""The world's offer catalog: offers as arrays, drawn from the seeded catalog stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.vocabulary import CATEGORIES, OFFER_TYPES
from simulators.world.people import _CAT, _TYPE, BoolArray, FloatArray, IntArray

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
