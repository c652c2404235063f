"""Ranking policy: consent gating, eligibility, one model run per decision, diversity, order.

Pure: no I/O, no clock (callers pass `now`). The final score of an offer is its model score,
nothing blended in. Ties are broken by the order alone: higher `priority` first, then the
smaller offer id, so equal scores give a stable, reproducible ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import numpy as np

from agent.decide.catalog import Catalog, build_catalog
from agent.decide.decision import (
    MAX_LIMIT,
    Consent,
    Decision,
    RankedOffer,
    Situation,
    eligibility,
    reasons_for,
)
from agent.decide.policy import (
    Gate,
    Household,
    cap_arrays,
    eligible_mask,
    filter_codes,
    held_until,
    holdout_rows,
    select,
    surface_capped,
)
from agent.decide.remote import RankResult
from agent.decide.rules import CODE, REASONS, min_score_rule
from agent.features.context import UserContext
from agent.model.inputs import prepare_inputs
from agent.model.scoring import Model
from protocol.envelopes import Offer

__all__ = [
    "MAX_LIMIT",
    "Consent",
    "Decision",
    "RankedOffer",
    "Situation",
    "decide",
    "decide_catalog",
    "eligibility",
]


def decide(  # noqa: PLR0917  # positional signature is the agent's published seam
    model: Model | None,
    offers: Sequence[Offer],
    ctx: UserContext,
    surface: str,
    limit: int,
    now: datetime,
    consent: Consent,
    explain: bool = False,
    *,
    max_candidates: int | None = None,
) -> Decision:
    """Rank `offers` for `surface` at `now` (builds their catalog; see `decide_catalog`)."""
    if not consent.marketing:
        version = model.version if model is not None else None
        return Decision([], [(o.id, "no_marketing_consent") for o in offers], version)
    catalog = build_catalog(offers)
    return decide_catalog(
        model,
        catalog,
        ctx,
        surface,
        limit,
        now,
        consent,
        explain,
        max_candidates=max_candidates,
        reasons_always=True,
    )


def decide_catalog(  # noqa: PLR0917  # one flat hot path, on purpose
    model: Model | None,
    catalog: Catalog,
    ctx: UserContext,
    surface: str,
    limit: int,
    now: datetime,
    consent: Consent,
    explain: bool = False,
    *,
    max_candidates: int | None = None,
    situation: Situation | None = None,
    reasons_always: bool = False,
    remote: RankResult | None = None,
) -> Decision:
    """Rank the catalog's offers eligible for `surface` at `now`; at most `limit` (1..50).

    * No marketing consent: nothing is returned, every offer is filtered `no_marketing_consent`.
    * No personalization consent (or a non-personalized `ctx`): personal features take their
      spec defaults, targeting on personal data does not match, and every offer carries
      `non_personalized`.
    * Quiet hours (the profile's, device local time): nothing is shown, every candidate is
      filtered `quiet_hours` and `held_until` says when they may be shown again.
    * Eligibility and caps are vectorised masks (`agent.decide.policy`); all candidates are scored
      in one `session.run`. `model=None` falls back to `priority / 100` (reason `no_model`),
      unless `remote` carries the scores another device (the household's coordinator) gave
      the candidates (reason `remote:v<version>`; an offer it did not score is filtered
      `non_finite_score`).
    * At most one offer per campaign; a campaign holding this device out takes its slot
      without being shown (`counterfactual`), the next best fills it.
    * `max_candidates`: beyond it, the lowest-priority candidates are filtered `over_budget`.
    * `explain=True` adds each returned offer's scaled inputs to its reasons and lists every
      offer not returned in `filtered` with the first reason that kept it off. Without it,
      `filtered` lists only what the walk met (or everything, with `reasons_always`).
    """
    version = model.version if model is not None else None
    if model is None and remote is not None:
        version = remote.model_version
    if not consent.marketing:
        return Decision([], [(o.id, "no_marketing_consent") for o in catalog.offers], version)
    limit = min(max(int(limit), 1), MAX_LIMIT)
    if not consent.personalization:
        ctx = ctx.depersonalized()
    sit = situation or _PLAIN
    household = Household(
        ctx.profile,
        ctx.personalized,
        ctx.member_tier,
        ctx.owned,
        frozenset(ctx.category_7d) if ctx.personalized else frozenset(),
    )
    caps = cap_arrays(catalog, sit.caps, sit.limits) if sit.caps is not None else None
    refused = catalog.rows(sit.refused) if sit.refused else None
    held_rows = catalog.rows(sit.household_held) if sit.household_held else None
    gate = Gate(surface, now.timestamp(), household, caps, refused, held_rows)
    mask = eligible_mask(catalog, gate)
    want_reasons = explain or reasons_always
    codes = filter_codes(catalog, gate) if want_reasons else None
    rows = np.flatnonzero(mask)
    filtered_rows: list[tuple[int, int]] = []

    blanket = surface_capped(sit.caps, sit.limits, surface) if sit.caps is not None else None
    held = held_until(now, ctx.local_hour, sit.quiet) if sit.quiet else None
    if held is not None:
        blanket = "quiet_hours"
    if blanket is not None:
        code = CODE[blanket]
        if want_reasons:
            filtered_rows.extend((int(r), code) for r in rows.tolist())
        rows = rows[:0]
    if max_candidates is not None and len(rows) > max(max_candidates, 1):
        # rows are in (-priority, id) order: the first ones are the highest priorities
        keep = max(max_candidates, 1)
        over = CODE["over_budget"]
        filtered_rows.extend((int(r), over) for r in rows[keep:].tolist())
        rows = rows[:keep]

    ranked: list[RankedOffer] = []
    counterfactual: list[RankedOffer] = []
    if len(rows):
        matrix: np.ndarray | None = None
        if model is not None:
            matrix = prepare_inputs(model.spec, catalog).matrix(rows, ctx)
            scores = model.score(matrix)
            common: tuple[str, ...] = (f"model:v{model.version}",)
        elif remote is not None:
            got, offers = remote.scores, catalog.offers
            scores = np.array([got.get(offers[r].id, math.nan) for r in rows.tolist()])
            common = (f"remote:v{remote.model_version}",)
        else:
            scores = catalog.priority[rows] / 100.0
            common = ("no_model",)
        common += ("personalized",) if ctx.personalized else ("non_personalized",)
        finite = np.isfinite(scores)
        if not finite.all():
            bad = CODE["non_finite_score"]
            filtered_rows.extend((int(r), bad) for r in rows[~finite].tolist())
            rows, scores = rows[finite], scores[finite]
            if matrix is not None:
                matrix = matrix[finite]
        floors = min_score_rule(
            sit.floor,
            (catalog.offers[r].campaign_id for r in rows.tolist()),
            model is not None or remote is not None,
        )
        if floors is not None and len(rows):
            high = scores >= np.array(floors, dtype=scores.dtype)
            if not high.all():
                low = CODE["below_min_score"]
                filtered_rows.extend((int(r), low) for r in rows[~high].tolist())
                rows, scores = rows[high], scores[high]
                if matrix is not None:
                    matrix = matrix[high]
        # a stable sort keeps the catalog's (-priority, id) order among equal scores
        order = np.argsort(-scores, kind="stable")
        by_rank = rows[order]
        held_out = (
            holdout_rows(catalog, sit.device_id, sit.holdout)[by_rank] if sit.device_id else None
        )
        picked = select(
            range(len(by_rank)), catalog.camp_code[by_rank], held_out, limit, explain=explain
        )
        names = model.spec.names if model is not None else []
        for group, out in ((picked.shown, ranked), (picked.counterfactual, counterfactual)):
            for p in group:
                k = int(order[p])
                offer = catalog.offers[int(by_rank[p])]
                reasons = common + reasons_for(offer, ctx)
                features: tuple[float, ...] | None = None
                if matrix is not None:
                    features = tuple(matrix[k].tolist())
                    if explain:
                        reasons += tuple(
                            f"input:{n}={v:.4g}" for n, v in zip(names, features, strict=True)
                        )
                out.append(RankedOffer(offer, float(scores[k]), reasons, features))
        filtered_rows.extend((int(by_rank[p]), code) for p, code in picked.dropped)

    filtered: list[tuple[str, str]] = []
    if want_reasons and codes is not None:
        for row in np.flatnonzero(codes).tolist():
            filtered.append((catalog.offers[row].id, REASONS[codes[row]]))
    filtered.extend((catalog.offers[r].id, REASONS[c]) for r, c in filtered_rows)
    return Decision(ranked, filtered, version, counterfactual, held)


_PLAIN = Situation()
