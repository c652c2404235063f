"""Why each campaign's offers were or were not shown, counted per campaign (issue 18). Pure.

Every decision puts each campaign of the catalog under one outcome: `shown` when the decision
returned one of its offers, else the furthest stage one of its offers reached (`STAGES`, the
later the closer to being shown). The counts go up as a signal of kind `offer_explain`
(`agent.intake.explanations`), one per campaign; the gateway counts each reached device once,
under `shown` or the furthest stage it reported (`cloud_gateway/campaigns/explain.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.decide.decision import Decision
from protocol.envelopes import Offer
from protocol.vocabulary import EXPLAIN_OUTCOMES, EXPLAIN_STAGES

STAGES = EXPLAIN_STAGES
OUTCOMES = EXPLAIN_OUTCOMES
STAGE_OF: dict[str, str] = {
    "duplicate": "invalid",
    "invalid": "invalid",
    "unknown_category": "invalid",
    "wrong_surface": "surface",
    "not_started": "schedule",
    "expired": "schedule",
    "targeting": "targeting",
    "targeting_needs_personalization": "consent",
    "no_marketing_consent": "consent",
    "sold_out": "stock",
    "claim_refused": "stock",
    "household_cap": "household_cap",
    "cap_offer_day": "cap",
    "cap_campaign_day": "cap",
    "cap_surface_day": "cap",
    "cap_global_day": "cap",
    "quiet_hours": "quiet_hours",
    "over_budget": "rank",
    "non_finite_score": "rank",
    "campaign_diversity": "rank",
    "below_limit": "rank",
    "below_min_score": "min_score",
    "holdout": "holdout",
}
_RANK = {name: i for i, name in enumerate(STAGES)}
MAX_CAMPAIGNS = 500
"""Campaigns tallied at once (a catalog holds at most this many offers)."""


def furthest(stages: set[str] | list[str]) -> str:
    """The stage closest to being shown among `stages` (`rank` when none)."""
    return max(stages, key=lambda s: _RANK.get(s, -1), default="rank")


class Catalogued(Protocol):
    """What `classify` reads of the offers a decision was made over: a full agent's `Catalog`
    or a thin device's `HeldOffers`."""

    @property
    def offers(self) -> Sequence[Offer]: ...
    @property
    def index(self) -> Mapping[str, int]: ...
    @property
    def campaigns(self) -> tuple[str, ...]: ...


def classify(decision: Decision, catalog: Catalogued) -> dict[str, str]:
    """Campaign id -> `shown` or the furthest stage its offers reached in `decision`, for the
    campaigns the decision says something of; every other campaign of the catalog was not
    reached by the ranking walk: `rank` (left implicit, `ExplainTally.add`)."""
    reached: dict[str, set[str]] = {}
    index, offers = catalog.index, catalog.offers
    for oid, reason in decision.filtered:
        row = index.get(oid)
        stage = STAGE_OF.get(reason)
        if row is not None and stage is not None:
            reached.setdefault(offers[row].campaign_id, set()).add(stage)
    for held in decision.counterfactual:
        reached.setdefault(held.offer.campaign_id, set()).add("holdout")
    out = {cid: furthest(stages) for cid, stages in reached.items()}
    for ranked in decision.ranked:
        out[ranked.offer.campaign_id] = "shown"
    return out


MAX_CATALOGS = 32
"""Catalogs whose decisions are counted apart before they are folded (`ExplainTally`)."""


@dataclass(slots=True)
class ExplainTally:
    """Per campaign, how many decisions ended in each outcome since the last report.

    Cheap per decision (the hot path): the outcomes `classify` names are counted one by one;
    that a decision was made is counted once per catalog (`runs`), and a campaign's `rank`
    count is worked out at `drain`: its decisions minus those with another outcome. Bounded:
    at most `MAX_CAMPAIGNS` campaigns (a new one past that is counted in `overflow`)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    runs: dict[int, tuple[tuple[str, ...], int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    overflow: int = 0

    def __bool__(self) -> bool:
        return bool(self.counts or self.runs or self.totals)

    def add(self, campaigns: tuple[str, ...], outcomes: dict[str, str]) -> None:
        """One decision over a catalog of `campaigns`, with `classify`'s outcomes."""
        key = id(campaigns)
        run = self.runs.get(key)
        if run is not None and run[0] is campaigns:
            self.runs[key] = (campaigns, run[1] + 1)
        else:
            if len(self.runs) >= MAX_CATALOGS:
                self._fold()
            self.runs[key] = (campaigns, 1)
        for cid, outcome in outcomes.items():
            row = self.counts.get(cid)
            if row is None:
                if len(self.counts) >= MAX_CAMPAIGNS:
                    self.overflow += 1
                    continue
                row = self.counts[cid] = {}
            row[outcome] = row.get(outcome, 0) + 1

    def _fold(self) -> None:
        for campaigns, n in self.runs.values():
            for cid in campaigns:
                if cid in self.totals or len(self.totals) < MAX_CAMPAIGNS:
                    self.totals[cid] = self.totals.get(cid, 0) + n
        self.runs.clear()

    def drain(self) -> dict[str, dict[str, int]]:
        """The counts so far (with `rank`), and a fresh start."""
        self._fold()
        totals, counts = self.totals, self.counts
        self.totals, self.counts = {}, {}
        for cid, total in totals.items():
            row = counts.get(cid)
            if row is None:
                if len(counts) >= MAX_CAMPAIGNS:
                    continue
                row = counts[cid] = {}
            rank = total - sum(n for o, n in row.items() if o != "rank")
            if rank > 0:
                row["rank"] = row.get("rank", 0) + rank
        return counts

    def restore(self, counts: dict[str, dict[str, int]]) -> None:
        """Put drained counts back (they could not be stored): `rank` included, so they are
        carried as decisions of their own."""
        for cid, row in counts.items():
            mine = self.counts.setdefault(cid, {})
            for outcome, n in row.items():
                if outcome != "rank":  # worked out again from the totals
                    mine[outcome] = mine.get(outcome, 0) + n
            self.totals[cid] = self.totals.get(cid, 0) + sum(row.values())
