"""The ranking side of `agent.decide.remote`: score a thin device's candidates with this
device's model and the household's context (what the coordinator's rank endpoint runs)."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from agent.decide.catalog import build_catalog
from agent.decide.remote import RankRequest, RankResult
from agent.features.context import UserContext
from agent.features.household import HouseholdContext
from agent.model.inputs import prepare_inputs
from agent.model.scoring import Model

__all__ = ["rank_for"]


def rank_for(
    model: Model | None, request: RankRequest, household: HouseholdContext | None
) -> RankResult:
    """Scores of `request.offers` by `model` for the asking device (its profile and local
    time). Its own `user.*` windows stay on it (zero here); `household.*` features are used
    only when the request says it may be personalized. Without a model: `priority / 100`.
    Raises `ScoringError` when the model fails."""
    if not request.offers:
        return RankResult(MappingProxyType({}), model.version if model is not None else None)
    catalog = build_catalog(request.offers)
    if model is None:
        return RankResult(
            MappingProxyType({o.id: o.priority / 100.0 for o in catalog.offers}), None
        )
    ctx = UserContext(
        request.profile,
        request.local_hour,
        _EMPTY,
        _EMPTY,
        _EMPTY_F,
        0,
        request.personalized,
        request.local_weekday,
        household=household if request.personalized else None,
    )
    rows = np.arange(len(catalog))
    scores = model.score(prepare_inputs(model.spec, catalog).matrix(rows, ctx))
    return RankResult(
        MappingProxyType(
            {o.id: float(v) for o, v in zip(catalog.offers, scores.tolist(), strict=True)}
        ),
        model.version,
    )


_EMPTY: MappingProxyType[str, int] = MappingProxyType({})
_EMPTY_F: MappingProxyType[str, float] = MappingProxyType({})
