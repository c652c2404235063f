"""The shared vocabulary of devices, models and campaigns: categories, offer types, profiles,
and the v1/v2 feature names a model's spec may ask for (docs/architecture.md)."""

from __future__ import annotations

from typing import get_args

from protocol.envelopes import OfferType

LATER_OFFER_TYPES: tuple[str, ...] = ("price_cut",)
"""Offer types added after the v1 feature table (issue 19): not model inputs (a model's
one-hot of types stays the v1 table; such an offer has none of them set), until a model spec
version appends them."""
OFFER_TYPES: tuple[str, ...] = tuple(t for t in get_args(OfferType) if t not in LATER_OFFER_TYPES)
PROFILES: tuple[str, ...] = ("hub", "tv", "phone", "speaker")
"""The device classes with a shipped firmware profile."""

CATEGORIES: tuple[str, ...] = (
    "purifier_filter",
    "water_filter",
    "tv_streaming",
    "phone_accessories",
    "smart_home",
    "appliances",
    "groceries",
    "games",
    "music",
    "membership",
)

FEATURE_NAMES: tuple[str, ...] = (
    "offer.discount",
    "offer.log_price",
    "offer.priority",
    "offer.limited",
    *(f"offer.type.{t}" for t in OFFER_TYPES),
    "user.category_count_24h",
    "user.category_count_7d",
    "user.consumable_need",
    "user.member_tier",
    "ctx.hour_sin",
    "ctx.hour_cos",
    *(f"ctx.profile.{p}" for p in PROFILES),
)
"""Every v1 feature, in the fixed order of model inputs."""

AGENT_FEATURE_NAMES: tuple[str, ...] = (
    "user.category_count_1h",
    "user.category_decayed",
    "user.category_recency_h",
    "user.category_seconds_24h",
    "user.category_seconds_7d",
    "user.owned_devices",
    "ctx.dow_sin",
    "ctx.dow_cos",
    "ctx.weekend",
)
"""More features the agent computes (1 h and decayed counts, recency, durations, owned
devices, day of week). A model's spec may name them after the v1 ones; they are kept apart
from `FEATURE_NAMES`, which is also the column list the synthetic world and the trainer
produce, until those compute them too."""

HOUSEHOLD_FEATURE_NAMES: tuple[str, ...] = (
    "household.consumable_need",
    "household.category_count_24h",
    "household.active_devices",
    "household.member_tier",
)
"""Feature spec v2's additions: the household's shared context as its coordinator serves it
(the home's appliances' consumable levels, the consenting devices' category counts, the
devices seen in the last hour, the member tier). Only a spec of version 2 may name them."""

FEATURE_NAMES_V2: tuple[str, ...] = FEATURE_NAMES + HOUSEHOLD_FEATURE_NAMES
"""Every v2 feature, in the fixed order of model inputs: v1, then the household's."""

SERVABLE_FEATURE_NAMES: tuple[str, ...] = (
    FEATURE_NAMES + AGENT_FEATURE_NAMES + HOUSEHOLD_FEATURE_NAMES
)
"""Every feature name a model's spec may ask the agent for, v1 first."""

PERSONAL_FEATURES: frozenset[str] = frozenset(
    n for n in FEATURE_NAMES_V2 if n.startswith(("user.", "household."))
)
"""Computed only with personalization consent; otherwise the spec's `default` is used."""

EXPLAIN_KIND = "offer_explain"
"""The signal a device reports why campaigns were or were not shown with (issue 18): attrs
`campaign_id` and a count per outcome (`shown` or one of `EXPLAIN_STAGES`)."""
EXPLAIN_STAGES: tuple[str, ...] = (
    "invalid",
    "surface",
    "schedule",
    "targeting",
    "consent",
    "stock",
    "household_cap",
    "cap",
    "quiet_hours",
    "min_score",
    "rank",
    "holdout",
)
"""Why a campaign was not shown, from the earliest filter to the latest (closest to shown)."""
EXPLAIN_OUTCOMES: tuple[str, ...] = ("shown", *EXPLAIN_STAGES)
