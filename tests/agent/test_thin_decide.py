"""A thin device's numpy-free decision (`agent.decide.thin.decide_offers`) equals the full
agent's columnar decision without a model (`decide_catalog(None, ...)`) on random catalogs and
policy state: the same offers in the same order with the same scores and reasons, the same
counterfactuals, the same filtered offers with the same reasons."""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.decide.catalog import build_catalog
from agent.decide.policy import CapCounts, CapLimits, HoldoutRules, QuietWindow
from agent.decide.ranking import Consent, Decision, Situation, decide_catalog
from agent.decide.remote import RankResult
from agent.decide.thin import decide_offers
from protocol.envelopes import Offer
from tests.agent.test_agent_policy import SURFACE, offers
from tests.support.builders import NOW, context, make_offer


def _same(thin: Decision, full: Decision) -> None:
    assert thin.ranked == full.ranked
    assert thin.counterfactual == full.counterfactual
    assert Counter(thin.filtered) == Counter(full.filtered)
    assert (thin.model_version, thin.held_until) == (full.model_version, full.held_until)


@settings(max_examples=100, deadline=None)
@given(
    offers(),
    st.booleans(),
    st.booleans(),
    st.integers(1, 5),
    st.sampled_from([None, 2, 5]),
    st.dictionaries(st.sampled_from(["o0", "o1", "o2", "o3"]), st.integers(0, 2)),
    st.dictionaries(st.sampled_from(["c1", "c2"]), st.integers(0, 3)),
    st.sampled_from(
        [
            CapLimits(),
            CapLimits(offer_per_day=1, campaign_per_day=2),
            CapLimits(by_campaign={"c1": (None, 1), "c2": (1, None)}),
            CapLimits(surface_per_day={SURFACE: 1}),
        ]
    ),
    st.sampled_from([None, HoldoutRules(0.5), HoldoutRules(0.0, {"c3": 1.0})]),
    st.frozensets(st.sampled_from(["o0", "o1", "o2"])),
    st.frozensets(st.sampled_from(["o1", "o3"])),
    st.sampled_from([(), (QuietWindow(5 * 60, 7 * 60),)]),
    st.sampled_from([None, "scores", "some"]),
    st.booleans(),
)
def test_the_thin_decision_equals_the_columnar_one_without_a_model(
    batch: list[Offer],
    personalized: bool,
    explain: bool,
    limit: int,
    max_candidates: int | None,
    offer_counts: dict[str, int],
    campaign_counts: dict[str, int],
    limits: CapLimits,
    holdout: HoldoutRules | None,
    refused: frozenset[str],
    held: frozenset[str],
    quiet: tuple[QuietWindow, ...],
    scored: str | None,
    marketing: bool,
) -> None:
    ctx = context(
        personalized,
        member_tier=1,
        owned=frozenset({"purifier"}),
        category_24h=MappingProxyType({"games": 2}),
    )
    consent = Consent(analytics=True, personalization=personalized, marketing=marketing)
    counts = CapCounts(day=1, offer=dict(offer_counts), campaign=dict(campaign_counts))
    counts.surface[SURFACE] = sum(offer_counts.values())
    situation = Situation(
        "device-1", counts, limits, quiet, refused, household_held=held, holdout=holdout
    )
    remote = None
    if scored is not None:
        every = scored == "scores"
        scores = {
            o.id: (o.discount if every or i % 2 else float("nan")) for i, o in enumerate(batch)
        }
        remote = RankResult(MappingProxyType(scores), 7)
    args = (ctx, SURFACE, limit, NOW, consent, explain)
    kw = {
        "max_candidates": max_candidates,
        "situation": situation,
        "reasons_always": not explain,
        "remote": remote,
    }
    thin = decide_offers(batch, *args, **kw)  # type: ignore[arg-type]
    full = decide_catalog(None, build_catalog(batch), *args, **kw)  # type: ignore[arg-type]
    _same(thin, full)


def test_without_policy_state_the_thin_decision_ranks_by_priority() -> None:
    batch = [
        make_offer("low", campaign_id="c1", priority=10, surfaces=[SURFACE]),
        make_offer("high", campaign_id="c2", priority=90, surfaces=[SURFACE]),
        make_offer("other", campaign_id="c3", priority=99, surfaces=["tv_screensaver"]),
    ]
    consent = Consent(analytics=True, personalization=False, marketing=True)
    got = decide_offers(batch, context(False), SURFACE, 3, NOW, consent, reasons_always=True)
    assert [(r.offer.id, r.score, r.reasons) for r in got.ranked] == [
        ("high", 0.9, ("no_model", "non_personalized")),
        ("low", 0.1, ("no_model", "non_personalized")),
    ]
    assert got.filtered == [("other", "wrong_surface")]
    catalog = build_catalog(batch)
    full = decide_catalog(
        None, catalog, context(False), SURFACE, 3, NOW, consent, reasons_always=True
    )
    _same(got, full)
