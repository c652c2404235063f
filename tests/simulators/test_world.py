"""The synthetic world: deterministic per seed, vectorised, and speaking the documented forms."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from models.features import FEATURE_NAMES_V2
from protocol.envelopes import Offer, Signal
from protocol.ids import new_id, parse_time
from protocol.topics import DEVICE_ID_RE
from protocol.vocabulary import CATEGORIES, OFFER_TYPES, PROFILES
from simulators import world as w
from simulators.world import people

# docs/architecture.md, "Signals the household sends".
DOCUMENTED_ATTRS = {
    "app_open": {"app", "category"},
    "content_view": {"genre", "category", "seconds"},
    "search": {"category", "query_len"},
    "purchase": {"category", "amount"},
    "consumable_level": {"category", "level"},
    "member_tier": {"tier"},
}
EXPORT_KEYS = {"device_id", "profile", "offer_id", "campaign_id", "features", "kind", "at"}


def _same(a: w.World, b: w.World) -> bool:
    fields = (
        "affinity",
        "activity",
        "price_sensitivity",
        "peak_hour",
        "tier",
        "owns",
        "level",
        "devices",
        "linked",
        "knows_tier",
        "clickiness",
    )
    return (
        all(np.array_equal(getattr(a.households, f), getattr(b.households, f)) for f in fields)
        and a.catalog.records() == b.catalog.records()
    )


def test_world_is_deterministic_per_seed() -> None:
    assert _same(w.make_world(3, 500), w.make_world(3, 500))
    assert not _same(w.make_world(3, 500), w.make_world(4, 500))


def test_a_hundred_thousand_households_are_arrays_of_the_right_shape() -> None:
    world = w.make_world(1, 100_000)
    h = world.households
    assert len(h) == 100_000
    assert h.affinity.shape == (100_000, len(CATEGORIES))
    np.testing.assert_allclose(h.affinity.sum(axis=1), 1.0)
    assert h.devices.any(axis=1).all()
    assert set(np.unique(h.tier).tolist()) == {0, 1, 2, 3}
    assert not (h.linked & ~h.devices).any()
    assert ((h.level >= 0) & (h.level <= 1)).all()
    assert (h.level[~h.owns] == 0).all()


def test_logged_feature_columns_are_the_models_spec() -> None:
    logs = w.logged_arrays(w.make_world(3, 50), range(50), 2, 0)
    assert logs.features.shape == (100, len(FEATURE_NAMES_V2))


def test_household_columns_are_what_the_coordinator_would_hold() -> None:
    world = w.make_world(3, 400)
    logs = w.logged_arrays(world, range(400), 5, 0)
    col = {name: logs.features[:, j] for j, name in enumerate(FEATURE_NAMES_V2)}
    hh = world.households
    # the home's 24 h count includes the showing device's own
    assert (col["household.category_count_24h"] >= col["user.category_count_24h"]).all()
    assert (col["household.active_devices"] == hh.devices[logs.household].sum(axis=1)).all()
    # the appliance posts to the coordinator: the home knows a need the device may not see
    assert (col["household.consumable_need"] >= col["user.consumable_need"] - 1e-9).all()
    assert (col["household.consumable_need"] > col["user.consumable_need"]).any()


def test_catalog_covers_every_type_and_category_and_forms_valid_offers() -> None:
    catalog = w.make_world(5, 10).catalog
    records = catalog.records()
    assert {r["type"] for r in records} == set(OFFER_TYPES)
    assert {r["category"] for r in records} == set(CATEGORIES)
    assert any(r["limited"] for r in records)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    for record in records:
        Offer(**record, surfaces=["tv_home_banner"], starts_at=now, expires_at=now + timedelta(7))
    assert catalog.index(records[5]["id"]) == 5


@pytest.mark.parametrize("profile", PROFILES)
def test_usage_signals_have_documented_kinds_and_attrs(profile: str) -> None:
    world = w.make_world(2, 200)
    persona = next(
        world.persona(i)
        for i in range(200)
        if profile in world.persona(i).linked
        and world.persona(i).consumables
        and profile in world.persona(i).knows_tier
    )
    signals = w.usage_signals(persona, profile, np.random.default_rng(0), 2000)
    assert signals == w.usage_signals(persona, profile, np.random.default_rng(0), 2000)
    assert {s["kind"] for s in signals} == set(DOCUMENTED_ATTRS)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    for s in signals:
        assert set(s) == {"kind", "attrs"}
        assert set(s["attrs"]) == DOCUMENTED_ATTRS[s["kind"]]
        if "category" in s["attrs"]:
            assert s["attrs"]["category"] in CATEGORIES
        if s["kind"] == "consumable_level":
            assert 0.0 <= s["attrs"]["level"] <= 1.0
            assert s["attrs"]["category"] in persona.consumables
        if s["kind"] == "member_tier":
            assert s["attrs"]["tier"] == persona.tier
        Signal(id=new_id(), kind=s["kind"], at=now, attrs=s["attrs"])


def test_usage_signals_follow_the_households_affinity() -> None:
    world = w.make_world(8, 50)
    persona = world.persona(0)
    signals = w.usage_signals(persona, "phone", np.random.default_rng(1), 5000)
    counts = {c: 0 for c in CATEGORIES}
    for s in signals:
        if s["kind"] in w.CATEGORIZED_KINDS:
            counts[s["attrs"]["category"]] += 1
    weighted = np.asarray(persona.affinity) * people._CATEGORY_WEIGHT[PROFILES.index("phone")]
    assert max(counts, key=lambda c: counts[c]) == CATEGORIES[int(np.argmax(weighted))]


def test_logged_examples_are_in_the_export_format_and_deterministic() -> None:
    world = w.make_world(9, 300)
    examples = w.logged_examples(world, range(300), 4, 0)
    assert examples == w.logged_examples(world, range(300), 4, 0)
    assert examples != w.logged_examples(world, range(300), 4, 1)
    assert len(examples) == 1200
    for line, example in zip(w.to_jsonl(examples), examples, strict=True):
        assert line.endswith("\n")
        assert json.loads(line) == example
        assert set(example) == EXPORT_KEYS
        assert DEVICE_ID_RE.match(example["device_id"])
        assert example["device_id"].endswith("-" + example["profile"])
        assert list(example["features"]) == list(FEATURE_NAMES_V2)
        assert example["kind"] in {"click", "impression"}
        assert example["offer_id"] in world.catalog.ids
        at = parse_time(example["at"])
        assert datetime(2026, 3, 1, tzinfo=UTC) < at < datetime(2026, 4, 1, tzinfo=UTC)
        f = example["features"]
        local_hour = (at.hour + w.UTC_OFFSET_HOURS) % 24 + at.minute / 60
        assert f["ctx.hour_sin"] == pytest.approx(np.sin(2 * np.pi * local_hour / 24), abs=1e-6)
        assert f[f"ctx.profile.{example['profile']}"] == 1
        assert f["user.category_count_24h"] <= f["user.category_count_7d"]
    clicks = sum(e["kind"] == "click" for e in examples)
    assert 0.02 < clicks / len(examples) < 0.3


def test_ground_truth_rewards_a_running_out_filter() -> None:
    world = w.make_world(4, 2000)
    h = world.households
    owner = int(np.flatnonzero(h.owns[:, 0] & (h.level[:, 0] > 0.5))[0])
    offer = next(
        i
        for i, r in enumerate(world.catalog.records())
        if r["type"] == "replenishment" and r["category"] == "purifier_filter"
    )
    before = world.p_click(owner, world.catalog.ids[offer], 20, "tv")
    h.level[owner, 0] = 0.02  # the filter runs low
    after = world.p_click(owner, world.catalog.ids[offer], 20, "tv")
    assert 0.0 < before < after < 1.0
