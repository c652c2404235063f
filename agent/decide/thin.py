"""A thin device's decisions, without numpy: `rank_request` builds what it asks the household's
coordinator (the port and the wire forms: `agent.decide.remote`), `decide_offers` ranks the
held offers with the coordinator's scores or by priority.

`decide_offers` is `agent.decide.ranking.decide_catalog` with no model, offer by offer: the same
rules (`agent.decide.rules`), the same order, the same reasons; a property test holds the two
equal (tests/agent/test_thin_decide.py). A thin device's process never imports numpy or
onnxruntime (tests/agent/test_thin_agent.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from agent.decide.decision import (
    MAX_LIMIT,
    Consent,
    Decision,
    RankedOffer,
    Situation,
    eligibility,
    reasons_for,
)
from agent.decide.remote import MAX_REMOTE_OFFERS, RankRequest, RankResult
from agent.decide.rules import (
    CODE,
    REASONS,
    Household,
    held_until,
    in_holdout_of,
    min_score_rule,
    offer_code,
    select,
    surface_capped,
)
from agent.features.context import UserContext
from protocol.envelopes import Offer

__all__ = ["HeldOffers", "decide_offers", "rank_request"]

_PLAIN = Situation()


@dataclass(frozen=True, slots=True, eq=False)
class HeldOffers:
    """A thin device's held offers, as the full agent's `Catalog` names them for the
    explanations (`agent.decide.explain.classify`): one per offer book version."""

    offers: tuple[Offer, ...]
    version: int
    index: Mapping[str, int]
    campaigns: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.offers)

    @classmethod
    def of(cls, offers: Sequence[Offer], version: int) -> HeldOffers:
        index: dict[str, int] = {}
        for i, offer in enumerate(offers):
            index.setdefault(offer.id, i)
        campaigns = tuple(dict.fromkeys(o.campaign_id for o in offers))
        return cls(tuple(offers), version, MappingProxyType(index), campaigns)


def rank_request(
    offers: Sequence[Offer],
    *,
    device_id: str,
    profile: str,
    surface: str,
    now: datetime,
    local_hour: float,
    local_weekday: int,
    personalized: bool,
    refused: frozenset[str] = frozenset(),
    max_offers: int = MAX_REMOTE_OFFERS,
) -> RankRequest | None:
    """What a thin device asks: the `offers` showable on `surface` at `now` (not refused,
    the highest priorities first up to `max_offers`); None when there is none."""
    candidates, _ = eligibility(offers, surface, now)
    kept = [o for o in candidates if o.id not in refused]
    if not kept:
        return None
    kept.sort(key=lambda o: (-o.priority, o.id))
    return RankRequest(
        device_id=device_id,
        profile=profile,
        surface=surface,
        local_hour=local_hour,
        local_weekday=local_weekday,
        personalized=personalized,
        offers=tuple(kept[: min(max_offers, MAX_REMOTE_OFFERS)]),
    )


def decide_offers(  # noqa: PLR0917  # one flat path, as decide_catalog
    offers: Sequence[Offer],
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
    """Rank `offers` for `surface` at `now` with `remote`'s scores (reason `remote:v<version>`;
    an offer it did not score is filtered `non_finite_score`), else by `priority / 100`
    (reason `no_model`). Everything else as `agent.decide.ranking.decide_catalog`."""
    version = remote.model_version if remote is not None else None
    first: dict[str, int] = {}
    for i, offer in enumerate(offers):
        first.setdefault(offer.id, i)
    order = sorted(range(len(offers)), key=lambda i: (-offers[i].priority, offers[i].id, i))
    rows = [offers[i] for i in order]
    if not consent.marketing:
        return Decision([], [(o.id, "no_marketing_consent") for o in rows], version)
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
    duplicate = CODE["duplicate"]
    codes = [
        duplicate
        if first[o.id] != i
        else offer_code(
            o, surface, now, household, sit.caps, sit.limits, sit.refused, sit.household_held
        )
        for i, o in zip(order, rows, strict=True)
    ]
    want_reasons = explain or reasons_always
    candidates = [r for r, code in enumerate(codes) if code == 0]
    filtered_rows: list[tuple[int, int]] = []

    blanket = surface_capped(sit.caps, sit.limits, surface) if sit.caps is not None else None
    held = held_until(now, ctx.local_hour, sit.quiet) if sit.quiet else None
    if held is not None:
        blanket = "quiet_hours"
    if blanket is not None:
        if want_reasons:
            filtered_rows.extend((r, CODE[blanket]) for r in candidates)
        candidates = []
    if max_candidates is not None and len(candidates) > max(max_candidates, 1):
        keep = max(max_candidates, 1)  # rows are in (-priority, id) order
        filtered_rows.extend((r, CODE["over_budget"]) for r in candidates[keep:])
        candidates = candidates[:keep]

    ranked: list[RankedOffer] = []
    counterfactual: list[RankedOffer] = []
    if candidates:
        if remote is not None:
            got = remote.scores
            scores = [got.get(rows[r].id, math.nan) for r in candidates]
            common: tuple[str, ...] = (f"remote:v{remote.model_version}",)
        else:
            scores = [rows[r].priority / 100.0 for r in candidates]
            common = ("no_model",)
        common += ("personalized",) if ctx.personalized else ("non_personalized",)
        scored: list[tuple[int, float]] = []
        floors = min_score_rule(
            sit.floor, (rows[r].campaign_id for r in candidates), remote is not None
        )
        for i, (r, score) in enumerate(zip(candidates, scores, strict=True)):
            if math.isfinite(score) and floors is not None and score < floors[i]:
                filtered_rows.append((r, CODE["below_min_score"]))
            elif math.isfinite(score):
                scored.append((r, score))
            else:
                filtered_rows.append((r, CODE["non_finite_score"]))
        # a stable sort keeps the (-priority, id) order among equal scores
        scored.sort(key=lambda pair: -pair[1])
        by_rank = [r for r, _ in scored]
        held_out = (
            [in_holdout_of(rows[r], sit.device_id, sit.holdout) for r in by_rank]
            if sit.device_id
            else None
        )
        campaigns: dict[str, int] = {}
        camp_code = [campaigns.setdefault(rows[r].campaign_id, len(campaigns)) for r in by_rank]
        picked = select(range(len(by_rank)), camp_code, held_out, limit, explain=explain)
        for group, out in ((picked.shown, ranked), (picked.counterfactual, counterfactual)):
            for p in group:
                offer = rows[by_rank[p]]
                out.append(RankedOffer(offer, scored[p][1], common + reasons_for(offer, ctx)))
        filtered_rows.extend((by_rank[p], code) for p, code in picked.dropped)

    filtered: list[tuple[str, str]] = []
    if want_reasons:
        filtered.extend((rows[r].id, REASONS[code]) for r, code in enumerate(codes) if code)
    filtered.extend((rows[r].id, REASONS[c]) for r, c in filtered_rows)
    return Decision(ranked, filtered, version, counterfactual, held)
