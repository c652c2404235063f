"""Model inputs: the scaled float32 tensor a model scores, built from its feature spec.

`build_matrix` turns candidate offers and a `UserContext` into the model's scaled input, column
by column with numpy; decisions use `prepare_inputs` on the held catalog (offer-side columns
scaled once per catalog, the context's columns per decision).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agent.decide.catalog import Catalog, build_catalog
from agent.errors import ModelRejected
from agent.features.context import PERSONAL_FEATURES, RECENCY_CAP_H, UserContext
from protocol.envelopes import FeatureSpec, Offer
from protocol.vocabulary import OFFER_TYPES


@dataclass(frozen=True, slots=True, eq=False)
class InputPlan:
    """A spec pre-digested for `build_matrix`: names and float32 vectors of its parameters."""

    spec: FeatureSpec
    names: tuple[str, ...]
    personal: tuple[bool, ...]
    default: np.ndarray
    mean: np.ndarray
    scale: np.ndarray


_plans: dict[int, InputPlan] = {}
_MAX_PLANS = 16


def spec_plan(spec: FeatureSpec) -> InputPlan:
    """The (cached) digest of `spec`: feature names, personal flags, parameter vectors."""
    plan = _plans.get(id(spec))
    if plan is not None and plan.spec is spec:
        return plan
    feats = spec.features
    plan = InputPlan(
        spec=spec,
        names=tuple(f.name for f in feats),
        # the agent's own table decides what is personal, whatever the spec claims
        personal=tuple(f.personal or f.name in PERSONAL_FEATURES for f in feats),
        default=np.array([f.default for f in feats], dtype=np.float32),
        mean=np.array([f.mean for f in feats], dtype=np.float32),
        scale=np.array([f.scale for f in feats], dtype=np.float32),
    )
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[id(spec)] = plan
    return plan


def build_matrix(spec: FeatureSpec, offers: Sequence[Offer], ctx: UserContext) -> np.ndarray:
    """The scaled float32 `[N, F]` input for `offers` (in their order), columns in `spec` order.

    Each column is `(x - mean) / scale`; a personal feature takes its `default` as `x` when
    `ctx` is not personalized. (Decisions use `prepare_inputs` on the held catalog instead.)
    """
    plan = spec_plan(spec)
    if not offers:
        return np.empty((0, len(plan.names)), dtype=np.float32)
    catalog = build_catalog(offers)
    rows = np.argsort(catalog.source, kind="stable")
    return PreparedInputs(spec, catalog).matrix(rows, ctx)


# ---------------------------------------------------------------------- columnar fast path

_CATEGORY_COLUMNS = (
    "user.category_count_24h",
    "user.category_count_7d",
    "user.consumable_need",
    "user.category_count_1h",
    "user.category_decayed",
    "user.category_recency_h",
    "user.category_seconds_24h",
    "user.category_seconds_7d",
    "household.consumable_need",
    "household.category_count_24h",
)
_HOUSEHOLD_PREFIX = "household."


def _category_values(name: str, ctx: UserContext) -> tuple[Mapping[str, float], float]:
    """The per-category table behind a `user.category_*` feature and its value when absent."""
    stats = ctx.stats
    if name.startswith(_HOUSEHOLD_PREFIX):
        hh = ctx.household
        if hh is None:  # the column takes its default (`PreparedInputs.matrix`)
            return _NO_TABLE, 0.0
        if name == "household.consumable_need":
            return hh.consumable_need, 0.0
        return hh.category_count_24h, 0.0
    tables: dict[str, tuple[Mapping[str, float], float]] = {
        "user.category_count_24h": (ctx.category_24h, 0.0),
        "user.category_count_7d": (ctx.category_7d, 0.0),
        "user.consumable_need": (ctx.consumable_need, 0.0),
        "user.category_count_1h": (stats.hour, 0.0),
        "user.category_decayed": (stats.decayed, 0.0),
        "user.category_recency_h": (stats.recency_h, RECENCY_CAP_H),
        "user.category_seconds_24h": (stats.seconds_day, 0.0),
        "user.category_seconds_7d": (stats.seconds_week, 0.0),
    }
    return tables[name]


def _scalar_value(name: str, ctx: UserContext) -> float:
    """A feature that is the same for every candidate of one decision."""
    if name == "user.member_tier":
        return float(ctx.member_tier)
    if name == "user.owned_devices":
        return float(len(ctx.owned))
    if name.startswith(_HOUSEHOLD_PREFIX):
        hh = ctx.household
        if name == "household.active_devices":
            return float(hh.active_devices) if hh is not None else 0.0
        if name == "household.member_tier":
            return float(hh.member_tier) if hh is not None else 0.0
    if name == "ctx.hour_sin":
        return math.sin(2 * math.pi * ctx.local_hour / 24)
    if name == "ctx.hour_cos":
        return math.cos(2 * math.pi * ctx.local_hour / 24)
    week = (ctx.local_weekday + ctx.local_hour / 24) / 7
    if name == "ctx.dow_sin":
        return math.sin(2 * math.pi * week)
    if name == "ctx.dow_cos":
        return math.cos(2 * math.pi * week)
    if name == "ctx.weekend":
        return 1.0 if ctx.local_weekday >= 5 else 0.0
    if name.startswith("ctx.profile."):
        return 1.0 if ctx.profile == name[len("ctx.profile.") :] else 0.0
    raise ModelRejected(f"spec names unknown feature {name!r}")


class PreparedInputs:
    """A spec applied to a catalog once: every offer-side column scaled in advance.

    `matrix(rows, ctx)` then costs a row gather and two column assignments, whatever the spec.
    """

    __slots__ = (
        "_cat_cache",
        "cat_cols",
        "catalog",
        "house_cols",
        "house_default",
        "plan",
        "scalar_cols",
        "scalar_names",
        "static",
    )

    def __init__(self, spec: FeatureSpec, catalog: Catalog) -> None:
        plan = spec_plan(spec)
        self.plan = plan
        self.catalog = catalog
        n, width = len(catalog), len(plan.names)
        raw = np.zeros((width, n), dtype=np.float64)
        cat_cols: list[int] = []
        scalar_cols: list[int] = []
        for j, name in enumerate(plan.names):
            if name == "offer.discount":
                raw[j] = catalog.discount
            elif name == "offer.log_price":
                raw[j] = np.log1p(catalog.price)
            elif name == "offer.priority":
                raw[j] = catalog.priority / 100.0
            elif name == "offer.limited":
                raw[j] = catalog.limited
            elif name.startswith("offer.type."):
                code = OFFER_TYPES.index(name[len("offer.type.") :])
                raw[j] = catalog.type_code == code
            elif name in _CATEGORY_COLUMNS:
                cat_cols.append(j)
            else:
                _scalar_value(name, _PROBE)  # refuses unknown names now, not mid-decision
                scalar_cols.append(j)
        raw -= plan.mean[:, None]
        raw /= plan.scale[:, None]
        self.static = np.ascontiguousarray(raw.T, dtype=np.float32)
        self.cat_cols = np.array(cat_cols, dtype=np.intp)
        self.scalar_cols = np.array(scalar_cols, dtype=np.intp)
        self.scalar_names = tuple(plan.names[j] for j in scalar_cols)
        house = [j for j, name in enumerate(plan.names) if name.startswith(_HOUSEHOLD_PREFIX)]
        self.house_cols = np.array(house, dtype=np.intp)
        self.house_default = (
            (plan.default[self.house_cols] - plan.mean[self.house_cols])
            / plan.scale[self.house_cols]
        ).astype(np.float32)
        self._cat_cache: tuple[tuple[object, ...], np.ndarray] | None = None

    def _category_block(self, ctx: UserContext) -> np.ndarray:
        """`[n_categories, len(cat_cols)]` scaled values, cached while the context's tables are
        the same objects (the feature windows hand out the same ones for a minute)."""
        key = (ctx.category_24h, ctx.category_7d, ctx.consumable_need, ctx.stats, ctx.household)
        cached = self._cat_cache
        if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
            return cached[1]
        plan = self.plan
        cats = self.catalog.categories
        block = np.empty((len(cats), len(self.cat_cols)), dtype=np.float64)
        for k, j in enumerate(self.cat_cols.tolist()):
            table, missing = _category_values(plan.names[j], ctx)
            block[:, k] = [table.get(c, missing) for c in cats]
        block -= plan.mean[self.cat_cols]
        block /= plan.scale[self.cat_cols]
        scaled = block.astype(np.float32)
        self._cat_cache = (key, scaled)
        return scaled

    def matrix(self, rows: np.ndarray, ctx: UserContext) -> np.ndarray:
        """The scaled float32 `[len(rows), F]` input for catalog `rows` under `ctx`."""
        plan = self.plan
        m: np.ndarray = self.static[rows]
        personal = plan.personal
        if len(self.cat_cols):
            if ctx.personalized:
                m[:, self.cat_cols] = self._category_block(ctx)[self.catalog.cat_code[rows]]
            else:
                cols = self.cat_cols
                m[:, cols] = (plan.default[cols] - plan.mean[cols]) / plan.scale[cols]
        if len(self.scalar_cols):
            values = [
                float(plan.default[j])
                if personal[j] and not ctx.personalized
                else _scalar_value(name, ctx)
                for j, name in zip(self.scalar_cols.tolist(), self.scalar_names, strict=True)
            ]
            cols = self.scalar_cols
            m[:, cols] = (np.array(values) - plan.mean[cols]) / plan.scale[cols]
        if len(self.house_cols) and (not ctx.personalized or ctx.household is None):
            m[:, self.house_cols] = self.house_default  # no household context: spec defaults
        return m


_NO_TABLE: Mapping[str, float] = {}
_PROBE = UserContext("hub", 0.0, {}, {}, {}, 0, False)
_prepared: dict[tuple[int, int], PreparedInputs] = {}


def prepare_inputs(spec: FeatureSpec, catalog: Catalog) -> PreparedInputs:
    """The (cached) `PreparedInputs` of `spec` on `catalog`."""
    key = (id(spec), id(catalog))
    got = _prepared.get(key)
    if got is not None and got.plan.spec is spec and got.catalog is catalog:
        return got
    got = PreparedInputs(spec, catalog)
    if len(_prepared) >= _MAX_PLANS:
        _prepared.clear()
    _prepared[key] = got
    return got
