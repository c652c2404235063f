"""`household.*` features (feature spec v2): computed from the household's context only with
personalization consent, spec defaults without a household; v1 models keep being served."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from agent.decide.ranking import Consent, decide
from agent.features.household import HouseholdContext
from agent.features.windows import FeatureWindows
from agent.model.inputs import build_matrix
from agent.model.scoring import load_default_model, load_model
from protocol.envelopes import FeatureSpec
from protocol.vocabulary import FEATURE_NAMES, HOUSEHOLD_FEATURE_NAMES
from tests.support.builders import context, make_offer, spec_dict, write_model

NAMES = ["offer.priority", *HOUSEHOLD_FEATURE_NAMES]
SPEC = FeatureSpec.model_validate(
    spec_dict(
        NAMES,
        means=[0.5, 0.25, 4.0, 2.0, 1.0],
        scales=[0.25, 0.5, 2.0, 1.0, 1.0],
        defaults=[0.0, 0.25, 4.0, 2.0, 1.0],  # the means: a default scales to 0
    )
)
HOME = HouseholdContext(
    household_id="hh-1",
    consumable_need=MappingProxyType({"purifier_filter": 0.75}),
    category_count_24h=MappingProxyType({"purifier_filter": 10, "music": 2}),
    member_tier=3,
    active_devices=4,
)
OFFERS = [
    make_offer("filter", priority=50, category="purifier_filter"),
    make_offer("song", priority=50, category="music"),
]
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
EVERYTHING = Consent(analytics=True, personalization=True, marketing=True)


def test_household_features_come_from_the_household_context() -> None:
    matrix = build_matrix(SPEC, OFFERS, context(household=HOME))
    # (x - mean) / scale per column; a category the home has no figure for counts 0
    np.testing.assert_allclose(
        matrix,
        [[0.0, 1.0, 3.0, 2.0, 2.0], [0.0, -0.5, -1.0, 2.0, 2.0]],
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("personalized", "household"),
    [(True, None), (False, HOME), (False, None)],
    ids=["no-household", "no-consent", "neither"],
)
def test_without_a_household_or_consent_the_spec_defaults_are_used(
    personalized: bool, household: HouseholdContext | None
) -> None:
    matrix = build_matrix(SPEC, OFFERS, context(personalized, household=household))
    np.testing.assert_allclose(matrix[:, 1:], 0.0, atol=1e-6)


def test_the_windows_pass_the_household_on_only_with_consent() -> None:
    windows = FeatureWindows.load([])
    assert windows.context(NOW, "tv", "UTC", True, HOME).household is HOME
    assert windows.context(NOW, "tv", "UTC", False, HOME).household is None
    assert context(household=HOME).depersonalized().household is None


def test_the_shipped_v2_model_ranks_with_and_without_a_household() -> None:
    model = load_default_model()
    assert model.spec.version == 2
    assert model.spec.names[-len(HOUSEHOLD_FEATURE_NAMES) :] == list(HOUSEHOLD_FEATURE_NAMES)
    offers = [
        make_offer("filter", priority=50, category="purifier_filter", type="replenishment"),
        make_offer("song", priority=50, category="music"),
    ]
    alone = decide(model, offers, context(), "tv_home_banner", 2, NOW, EVERYTHING)
    home = decide(model, offers, context(household=HOME), "tv_home_banner", 2, NOW, EVERYTHING)
    for decision in (alone, home):
        assert len(decision.ranked) == 2
        assert all(np.isfinite(r.score) for r in decision.ranked)
    by_id = {r.offer.id: r.score for r in home.ranked}
    alone_by_id = {r.offer.id: r.score for r in alone.ranked}
    # the home's filter runs low: the household context raises the filter offer's score
    assert by_id["filter"] > alone_by_id["filter"]
    reasons = {r.offer.id: r.reasons for r in home.ranked}
    assert "household_consumable_low" not in reasons["filter"]  # 0.75 is not low enough
    low = HouseholdContext("hh-1", consumable_need=MappingProxyType({"purifier_filter": 0.95}))
    lower = decide(model, offers, context(household=low), "tv_home_banner", 2, NOW, EVERYTHING)
    assert "household_consumable_low" in {r.offer.id: r.reasons for r in lower.ranked}["filter"]


def test_a_v1_model_is_still_served(tmp_path: Path) -> None:
    names = list(FEATURE_NAMES)
    weights = [0.1 * (i % 3) for i in range(len(names))]
    path, manifest = write_model(tmp_path, names, weights, -1.0)
    model = load_model(path, manifest)
    assert model.spec.version == 1
    decision = decide(model, OFFERS, context(household=HOME), "tv_home_banner", 2, NOW, EVERYTHING)
    assert [r.reasons[0] for r in decision.ranked] == ["model:v1", "model:v1"]
    assert all(np.isfinite(r.score) for r in decision.ranked)


def test_a_v1_spec_naming_a_household_feature_is_refused() -> None:
    body = spec_dict(NAMES)
    body["version"] = 1
    with pytest.raises(ValueError, match="needs feature spec version 2"):
        FeatureSpec.model_validate(body)
