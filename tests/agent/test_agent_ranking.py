"""Ranking policy: consent gating, eligibility, diversity, order; properties on random catalogs."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.decide.catalog import build_catalog
from agent.decide.explain import classify
from agent.decide.ranking import Consent, Decision, Situation, decide, decide_catalog, eligibility
from agent.decide.remote import RankResult
from agent.decide.thin import decide_offers
from agent.features.windows import FeatureWindows
from agent.model.scoring import Model, default_model_paths, load_default_model, load_model
from protocol.envelopes import Offer
from tests.support.builders import NOW, context, make_offer, write_model

ALL = Consent(analytics=True, personalization=True, marketing=True)
SURFACE = "tv_home_banner"
NAMES = ["offer.discount", "user.consumable_need", "user.category_count_24h", "offer.priority"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """Scores rise with discount, consumable need and the user's interest in the category."""
    path, manifest = write_model(tmp_path_factory.mktemp("model"), NAMES, [1.0, 4.0, 0.5, 0.0])
    return load_model(path, manifest)


def ids(decision: Decision) -> list[str]:
    return [r.offer.id for r in decision.ranked]


def test_without_marketing_consent_nothing_is_offered(model: Model) -> None:
    offers = [make_offer("a"), make_offer("b")]
    consent = Consent(analytics=True, personalization=True, marketing=False)
    decision = decide(model, offers, context(), SURFACE, 3, NOW, consent)
    assert decision.ranked == []
    assert decision.filtered == [("a", "no_marketing_consent"), ("b", "no_marketing_consent")]
    assert decision.model_version == 1


def test_a_low_filter_outranks_an_unrelated_offer_only_with_personalization(model: Model) -> None:
    windows = FeatureWindows()
    windows.observe("consumable_level", {"category": "purifier_filter", "level": 0.08}, NOW)
    filter_offer = make_offer(
        "filter", type="replenishment", category="purifier_filter", discount=0.1
    )
    unrelated = make_offer("games", category="games", discount=0.6)
    offers = [unrelated, filter_offer]

    ctx = windows.context(NOW, "tv", "Asia/Shanghai", personalized=True)
    decision = decide(model, offers, ctx, SURFACE, 2, NOW, ALL)
    assert ids(decision) == ["filter", "games"]
    top = decision.ranked[0]
    assert top.reasons[:2] == ("model:v1", "personalized")
    assert "consumable_low" in top.reasons
    assert "consumable_low" not in decision.ranked[1].reasons

    # the same household without personalization consent: personal features at defaults
    no_perso = Consent(analytics=True, personalization=False, marketing=True)
    plain = decide(model, offers, ctx, SURFACE, 2, NOW, no_perso)
    assert ids(plain) == ["games", "filter"]
    assert all(r.reasons == ("model:v1", "non_personalized") for r in plain.ranked)


def test_category_affinity_is_a_reason_when_the_user_looked_at_the_category(model: Model) -> None:
    ctx = context(category_24h=MappingProxyType({"games": 2}))
    decision = decide(model, [make_offer("g", category="games")], ctx, SURFACE, 1, NOW, ALL)
    assert decision.ranked[0].reasons == ("model:v1", "personalized", "category_affinity")


def test_higher_score_first_and_ties_by_priority_then_id(model: Model) -> None:
    offers = [
        make_offer("low", discount=0.1),
        make_offer("high", discount=0.9),
        make_offer("tie-b", discount=0.5, priority=50),
        make_offer("tie-a", discount=0.5, priority=50),
        make_offer("tie-prio", discount=0.5, priority=70),
    ]
    decision = decide(model, offers, context(), SURFACE, 10, NOW, ALL)
    assert ids(decision) == ["high", "tie-prio", "tie-a", "tie-b", "low"]
    scores = [r.score for r in decision.ranked]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > scores[1]


def test_at_most_one_offer_per_campaign(model: Model) -> None:
    offers = [
        make_offer("a1", campaign_id="spring", discount=0.2),
        make_offer("a2", campaign_id="spring", discount=0.8),
        make_offer("b1", campaign_id="summer", discount=0.5),
    ]
    decision = decide(model, offers, context(), SURFACE, 3, NOW, ALL)
    assert ids(decision) == ["a2", "b1"]
    assert ("a1", "campaign_diversity") in decision.filtered


def test_eligibility_reasons() -> None:
    offers = [
        make_offer("ok"),
        make_offer("soon", starts_at=NOW + timedelta(hours=1)),
        make_offer("gone", expires_at=NOW),
        make_offer("phone-only", surfaces=["phone_feed"]),
        make_offer("ok"),
        Offer.model_construct(**{**make_offer("bad").model_dump(), "discount": 7.0}),
    ]
    eligible, filtered = eligibility(offers, SURFACE, NOW)
    assert [o.id for o in eligible] == ["ok"]
    assert filtered == [
        ("soon", "not_started"),
        ("gone", "expired"),
        ("phone-only", "wrong_surface"),
        ("ok", "duplicate"),
        ("bad", "invalid"),
    ]


def test_limit_is_clamped_and_explain_accounts_for_every_offer(model: Model) -> None:
    offers = [make_offer(f"o{i:02d}", discount=i / 100) for i in range(60)]
    assert len(decide(model, offers, context(), SURFACE, 500, NOW, ALL).ranked) == 50
    assert ids(decide(model, offers, context(), SURFACE, 0, NOW, ALL)) == ["o59"]
    explained = decide(model, offers, context(), SURFACE, 2, NOW, ALL, explain=True)
    assert len(explained.filtered) == 58
    assert {reason for _, reason in explained.filtered} == {"below_limit"}
    assert "input:offer.discount=" in " ".join(explained.ranked[0].reasons)


def test_the_candidate_budget_keeps_the_highest_priorities(model: Model) -> None:
    offers = [make_offer(f"p{i}", priority=i, discount=1 - i / 10) for i in range(10)]
    decision = decide(model, offers, context(), SURFACE, 10, NOW, ALL, max_candidates=3)
    assert sorted(ids(decision)) == ["p7", "p8", "p9"]
    assert Counter(reason for _, reason in decision.filtered) == {"over_budget": 7}


def test_without_a_model_priority_decides(model: Model) -> None:
    offers = [make_offer("a", priority=10), make_offer("b", priority=90)]
    decision = decide(None, offers, context(), SURFACE, 2, NOW, ALL)
    assert ids(decision) == ["b", "a"]
    assert decision.model_version is None
    assert decision.ranked[0].reasons[0] == "no_model"


def test_ranked_offer_json_is_the_offer_plus_score_and_reasons(model: Model) -> None:
    decision = decide(model, [make_offer("a", price=19.9)], context(), SURFACE, 1, NOW, ALL)
    body = decision.ranked[0].to_json()
    assert body["id"] == "a"
    assert body["price"] == 19.9
    assert body["expires_at"].endswith("Z")
    assert 0.0 < body["score"] < 1.0
    assert body["reasons"] == ["model:v1", "personalized"]
    json.dumps(body)


@st.composite
def catalogs(draw: st.DrawFn) -> list[Offer]:
    n = draw(st.integers(0, 40))
    out: list[Offer] = []
    for i in range(n):
        start = draw(st.integers(-48, 6))
        length = draw(st.integers(1, 96))
        fields: dict[str, Any] = {
            "campaign_id": draw(st.sampled_from(["c1", "c2", "c3", "c4", "c5"])),
            "surfaces": draw(
                st.lists(
                    st.sampled_from([SURFACE, "tv_screensaver", "phone_feed"]),
                    min_size=1,
                    max_size=3,
                    unique=True,
                )
            ),
            "starts_at": NOW + timedelta(hours=start),
            "expires_at": NOW + timedelta(hours=start + length),
            "discount": draw(st.sampled_from([0.0, 0.1, 0.5, 0.9])),
            "priority": draw(st.integers(0, 100)),
            "category": draw(st.sampled_from(["purifier_filter", "games", "music"])),
        }
        out.append(make_offer(f"o{draw(st.integers(0, n + 3))}-{i % 3}", **fields))
    return out


@settings(max_examples=200, deadline=None)
@given(
    catalogs(),
    st.integers(-5, 80),
    st.booleans(),
    st.booleans(),
    st.floats(0, 1),
)
def test_decision_properties(
    model: Model,
    offers: list[Offer],
    limit: int,
    personalization: bool,
    explain: bool,
    need: float,
) -> None:
    ctx = context(consumable_need=MappingProxyType({"purifier_filter": need}))
    consent = Consent(analytics=False, personalization=personalization, marketing=True)
    decision = decide(model, offers, ctx, SURFACE, limit, NOW, consent, explain)
    ranked = decision.ranked
    assert len(ranked) <= min(max(limit, 1), 50)
    campaigns = [r.offer.campaign_id for r in ranked]
    assert len(campaigns) == len(set(campaigns))
    eligible, _ = eligibility(offers, SURFACE, NOW)
    eligible_ids = {o.id for o in eligible}
    for r in ranked:
        assert SURFACE in r.offer.surfaces
        assert r.offer.starts_at <= NOW < r.offer.expires_at
        assert r.offer.id in eligible_ids
    scores = [r.score for r in ranked]
    assert all(a >= b for a, b in itertools.pairwise(scores))
    if eligible:
        assert ranked  # something eligible is always shown
    if explain:  # every offer given is either returned or filtered with a reason
        assert Counter(ids(decision)) + Counter(i for i, _ in decision.filtered) == Counter(
            o.id for o in offers
        )


def test_windows_to_decision_end_to_end_uses_the_real_default_model() -> None:
    assert default_model_paths()[0].exists(), "the shipped model is committed in models/default"
    model = load_default_model()
    windows = FeatureWindows()
    windows.observe("consumable_level", {"category": "purifier_filter", "level": 0.08}, NOW)
    ctx = windows.context(NOW, "tv", "Asia/Shanghai", True)
    offers = [
        make_offer(f"x{i}", category=cat, type=kind, campaign_id=f"c{i}")
        for i, (cat, kind) in enumerate(
            [("purifier_filter", "replenishment"), ("games", "coupon"), ("music", "content")]
        )
    ]
    decision = decide(model, offers, ctx, SURFACE, 3, NOW, ALL)
    assert len(decision.ranked) == 3
    assert decision.model_version == model.version
    assert all(0.0 <= r.score <= 1.0 for r in decision.ranked)


def test_a_minimum_score_leaves_low_scored_offers_unshown_on_both_ranking_paths(
    model: Model,
) -> None:
    """`decisions.min_score`: model scores below it are filtered `below_min_score` (a slot may
    stay empty); the priority fallback of a device without a model ignores it."""
    offers = [
        make_offer("low", campaign_id="c1", discount=0.05),
        make_offer("high", campaign_id="c2", discount=0.95),
    ]
    catalog = build_catalog(offers)
    scores = {
        r.offer.id: r.score for r in decide(model, offers, context(), SURFACE, 2, NOW, ALL).ranked
    }
    floor = (scores["low"] + scores["high"]) / 2
    sit = Situation(min_score=floor)
    kept = decide_catalog(model, catalog, context(), SURFACE, 2, NOW, ALL, True, situation=sit)
    assert ids(kept) == ["high"]
    assert ("low", "below_min_score") in kept.filtered
    assert classify(kept, catalog)["c1"] == "min_score"  # what the marketer is told
    above_all = Situation(min_score=min(1.0, scores["high"] + 1e-6))
    empty = decide_catalog(model, catalog, context(), SURFACE, 2, NOW, ALL, situation=above_all)
    assert empty.ranked == []
    # no model: priority order, the floor (a probability) does not apply
    plain = decide_catalog(None, catalog, context(), SURFACE, 2, NOW, ALL, situation=above_all)
    assert len(plain.ranked) == 2
    # a thin device ranking with its coordinator's scores applies it the same way
    remote = RankResult(scores, 1)
    thin = decide_offers(offers, context(), SURFACE, 2, NOW, ALL, situation=sit, remote=remote)
    assert ids(thin) == ["high"]
    assert ("low", "below_min_score") in thin.filtered
    # a cloud policy's campaign floor replaces the device's for that campaign's offers only
    mixed = Situation(min_score=floor, campaign_min_score={"c1": 0.0, "c2": 1.0})
    full = decide_catalog(model, catalog, context(), SURFACE, 2, NOW, ALL, situation=mixed)
    thin = decide_offers(offers, context(), SURFACE, 2, NOW, ALL, situation=mixed, remote=remote)
    for decision in (full, thin):
        assert ids(decision) == ["low"]
        assert ("high", "below_min_score") in decision.filtered
