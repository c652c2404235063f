"""Ranking policy: consent gating, eligibility, one model run per decision, diversity, order.

Pure: no I/O, no clock (callers pass `now`). The final score of an offer is its model score,
nothing blended in. Ties are broken by the order alone: higher `priority` first, then the
smaller offer id, so equal scores give a stable, reproducible ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

import numpy as np

from agent.features import UserContext
from agent.scoring import Model, build_matrix
from protocol.envelopes import Offer

MAX_LIMIT = 50
_get_priority = attrgetter("priority")
CONSUMABLE_LOW = 0.8
"""`consumable_need` above which an offer of that category carries the reason `consumable_low`."""


@dataclass(frozen=True, slots=True)
class Consent:
    """The household's consent per purpose (absent means refused)."""

    analytics: bool = False
    personalization: bool = False
    marketing: bool = False


@dataclass(frozen=True, slots=True)
class RankedOffer:
    """One offer the device may show, with the score it was ranked by and why."""

    offer: Offer
    score: float
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The offer as JSON plus `score` and `reasons` (one item of `GET /v1/offers`)."""
        body = self.offer.model_dump(mode="json")
        body["score"] = self.score
        body["reasons"] = list(self.reasons)
        return body


@dataclass(frozen=True, slots=True)
class Decision:
    """Ranked offers (best first), the offers left out with a reason, the model version used."""

    ranked: list[RankedOffer]
    filtered: list[tuple[str, str]]
    model_version: int | None


def eligibility(
    offers: Sequence[Offer], surface: str, now: datetime
) -> tuple[list[Offer], list[tuple[str, str]]]:
    """Split `offers` into those showable on `surface` at `now`, and `(offer_id, reason)` pairs.

    Reasons: `duplicate` (an id seen earlier in `offers`), `wrong_surface`, `invalid` (fields out
    of range or `starts_at >= expires_at`), `not_started` (now < starts_at), `expired`
    (now >= expires_at).
    """
    eligible: list[Offer] = []
    filtered: list[tuple[str, str]] = []
    seen: set[str] = set()
    keep = eligible.append
    drop = filtered.append
    inf = math.inf
    for offer in offers:  # the hot loop of a decision: kept flat on purpose
        oid = offer.id
        if oid in seen:
            drop((oid, "duplicate"))
            continue
        seen.add(oid)
        starts_at = offer.starts_at
        expires_at = offer.expires_at
        if surface not in offer.surfaces:
            drop((oid, "wrong_surface"))
        elif not (
            # pydantic checked these on the wire; this guards offers built without validation
            starts_at < expires_at
            and 0.0 <= offer.discount <= 1.0
            and 0.0 <= offer.price < inf
            and 0 <= offer.priority <= 100
        ):
            drop((oid, "invalid"))
        elif now < starts_at:
            drop((oid, "not_started"))
        elif now >= expires_at:
            drop((oid, "expired"))
        else:
            keep(offer)
    return eligible, filtered


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
    """Rank the offers eligible for `surface` at `now`; at most `limit` (clamped to 1..50).

    * No marketing consent: nothing is returned, every offer is filtered `no_marketing_consent`.
    * No personalization consent (or a non-personalized `ctx`): personal features take their
      spec defaults and every offer carries `non_personalized`.
    * All eligible candidates are scored in one `session.run`. `model=None` (no model could be
      loaded) falls back to `priority / 100` as the score, with the reason `no_model`.
    * At most one offer per campaign is returned (the best); the others are filtered
      `campaign_diversity`. A non-finite model score filters the offer `non_finite_score`.
    * `max_candidates` (the profile's budget): beyond it, the lowest-priority eligible offers
      are filtered `over_budget` before scoring.
    * `explain=True` adds each returned offer's scaled inputs to its reasons
      (`input:<feature>=<value>`) and lists every eligible offer not returned in `filtered`
      (`campaign_diversity` or `below_limit`); otherwise the walk stops once `limit` is reached.
    """
    version = model.version if model is not None else None
    if not consent.marketing:
        return Decision([], [(o.id, "no_marketing_consent") for o in offers], version)
    limit = min(max(int(limit), 1), MAX_LIMIT)
    if not consent.personalization:
        ctx = ctx.depersonalized()
    eligible, filtered = eligibility(offers, surface, now)
    if max_candidates is not None and len(eligible) > max(max_candidates, 1):
        by_priority = sorted(eligible, key=lambda o: (-o.priority, o.id))
        eligible = by_priority[: max(max_candidates, 1)]
        filtered.extend((o.id, "over_budget") for o in by_priority[len(eligible) :])
    if not eligible:
        return Decision([], filtered, version)

    priorities = np.fromiter(map(_get_priority, eligible), np.float64, len(eligible))
    matrix: np.ndarray | None = None
    if model is not None:
        matrix = build_matrix(model.spec, eligible, ctx)
        scores = model.score(matrix)
        common: tuple[str, ...] = (f"model:v{model.version}",)
    else:
        scores = priorities / 100.0
        common = ("no_model",)
    common += ("personalized",) if ctx.personalized else ("non_personalized",)

    finite = np.isfinite(scores)
    if not finite.all():
        filtered.extend((eligible[i].id, "non_finite_score") for i in np.flatnonzero(~finite))
        scores = np.where(finite, scores, -np.inf)
    order: list[int] = [i for i in np.lexsort((-priorities, -scores)).tolist() if finite[i]]
    score_of: list[float] = scores.tolist()
    prio_of: list[float] = priorities.tolist()

    ranked: list[RankedOffer] = []
    campaigns: set[str] = set()
    start = 0
    while start < len(order):
        # a run of exact ties on (score, priority) is ordered by offer id
        first = order[start]
        end = start + 1
        while (
            end < len(order)
            and score_of[order[end]] == score_of[first]
            and prio_of[order[end]] == prio_of[first]
        ):
            end += 1
        run = order[start:end]
        if len(run) > 1:
            run.sort(key=lambda i: eligible[i].id)
        for i in run:
            offer = eligible[i]
            if offer.campaign_id in campaigns:
                filtered.append((offer.id, "campaign_diversity"))
            elif len(ranked) < limit:
                campaigns.add(offer.campaign_id)
                reasons = common + _reasons(offer, ctx)
                if explain and matrix is not None and model is not None:
                    reasons += tuple(
                        f"input:{name}={value:.4g}"
                        for name, value in zip(model.spec.names, matrix[i].tolist(), strict=True)
                    )
                ranked.append(RankedOffer(offer, score_of[i], reasons))
            else:
                filtered.append((offer.id, "below_limit"))
        start = end
        if not explain and len(ranked) >= limit:
            break
    return Decision(ranked, filtered, version)


def _reasons(offer: Offer, ctx: UserContext) -> tuple[str, ...]:
    if not ctx.personalized:
        return ()
    reasons: tuple[str, ...] = ()
    if ctx.category_24h.get(offer.category, 0) > 0:
        reasons += ("category_affinity",)
    if ctx.consumable_need.get(offer.category, 0.0) > CONSUMABLE_LOW:
        reasons += ("consumable_low",)
    return reasons
