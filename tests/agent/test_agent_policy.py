"""Policy as pure functions: vectorised masks equal a per-offer reference on random catalogs;
quiet hours, caps, holdout and diversity properties; the catalog path equals the list path."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.decide.catalog import REASONS, build_catalog
from agent.decide.policy import (
    MINUTES_PER_DAY,
    CapCounts,
    CapLimits,
    Gate,
    Household,
    QuietWindow,
    cap_arrays,
    eligible_mask,
    filter_codes,
    parse_hhmm,
    quiet_remaining,
    select,
    surface_capped,
)
from agent.decide.ranking import Consent, Situation, decide, decide_catalog
from agent.model.scoring import Model, load_model
from protocol.assign import in_holdout
from protocol.envelopes import Offer
from tests.support.builders import NOW, context, make_offer, write_model

SURFACE = "tv_home_banner"
ALL = Consent(analytics=True, personalization=True, marketing=True)
NAMES = ["offer.discount", "user.consumable_need", "user.category_count_1h", "ctx.dow_sin"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    path, manifest = write_model(tmp_path_factory.mktemp("m"), NAMES, [1.0, 4.0, 0.5, 0.1])
    return load_model(path, manifest)


@st.composite
def offers(draw: st.DrawFn) -> list[Offer]:
    n = draw(st.integers(0, 30))
    out: list[Offer] = []
    for _ in range(n):
        start = draw(st.integers(-48, 6))
        fields: dict[str, Any] = {
            "campaign_id": draw(st.sampled_from(["c1", "c2", "c3", "c4"])),
            "surfaces": draw(
                st.lists(st.sampled_from([SURFACE, "tv_screensaver"]), min_size=1, unique=True)
            ),
            "starts_at": NOW + timedelta(hours=start),
            "expires_at": NOW + timedelta(hours=start + draw(st.integers(1, 96))),
            "discount": draw(st.sampled_from([0.0, 0.3, 0.9])),
            "priority": draw(st.integers(0, 100)),
            "category": draw(st.sampled_from(["games", "music", "spaceships"])),
            "limited": draw(st.booleans()),
            "caps": draw(st.sampled_from([{}, {"per_day": 1}, {"campaign_per_day": 2}])),
            "holdout": draw(st.sampled_from([0.0, 0.5, 1.0])),
        }
        if fields["limited"]:
            fields["stock"] = draw(st.sampled_from([None, 0, 3]))
        if draw(st.integers(0, 4)) == 0:
            fields["targeting"] = draw(
                st.sampled_from(
                    [{"profiles": ["phone"]}, {"min_tier": 2}, {"owns_any": ["purifier"]}]
                )
            )
        out.append(make_offer(f"o{draw(st.integers(0, n + 2))}", **fields))
    return out


def reference(offer: Offer, seen_ids: set[str], gate: Gate, counts: CapCounts) -> str:
    """The rules written out once per offer: the first reason that applies, "" if none."""
    if offer.id in seen_ids:
        return "duplicate"
    seen_ids.add(offer.id)
    now = NOW
    hint = offer.targeting
    household = gate.household
    if gate.surface not in offer.surfaces:
        return "wrong_surface"
    if offer.category not in {"games", "music", "groceries", "purifier_filter"}:
        return "unknown_category"
    if now < offer.starts_at:
        return "not_started"
    if now >= offer.expires_at:
        return "expired"
    if hint is not None:
        if hint.profiles and household.profile not in hint.profiles:
            return "targeting"
        if hint.personal and not household.personalized:
            return "targeting_needs_personalization"
        if household.member_tier < hint.min_tier or (
            hint.owns_any and not set(hint.owns_any) & household.owned
        ):
            return "targeting"
    if offer.limited and offer.stock == 0:
        return "sold_out"
    if counts.offer.get(offer.id, 0) >= offer.caps.get("per_day", 10**9):
        return "cap_offer_day"
    if counts.campaign.get(offer.campaign_id, 0) >= offer.caps.get("campaign_per_day", 10**9):
        return "cap_campaign_day"
    return ""


@settings(max_examples=200, deadline=None)
@given(
    offers(),
    st.booleans(),
    st.integers(0, 3),
    st.dictionaries(st.sampled_from(["o0", "o1", "o2", "o3"]), st.integers(0, 2)),
    st.dictionaries(st.sampled_from(["c1", "c2"]), st.integers(0, 3)),
)
def test_vectorised_masks_equal_the_per_offer_reference(
    batch: list[Offer],
    personalized: bool,
    tier: int,
    offer_counts: dict[str, int],
    campaign_counts: dict[str, int],
) -> None:
    catalog = build_catalog(batch)
    counts = CapCounts(day=1, offer=dict(offer_counts), campaign=dict(campaign_counts))
    household = Household("tv", personalized, tier, frozenset({"purifier"}))
    gate = Gate(SURFACE, NOW.timestamp(), household, cap_arrays(catalog, counts, CapLimits()))
    mask = eligible_mask(catalog, gate)
    codes = filter_codes(catalog, gate)
    assert np.array_equal(mask, codes == 0)
    seen: set[str] = set()
    expected = Counter(reference(o, seen, gate, counts) for o in batch)
    got = Counter(REASONS[c] for c in codes.tolist())
    assert got == expected


def test_profile_caps_tighten_offer_caps_and_surface_and_global_caps_blanket() -> None:
    catalog = build_catalog([make_offer("a", caps={"per_day": 5}), make_offer("b")])
    counts = CapCounts(day=3)
    for _ in range(2):
        counts.add("a", "c-a", SURFACE, 3)
    limits = CapLimits(offer_per_day=2, surface_per_day={SURFACE: 3}, global_per_day=10)
    arrays = cap_arrays(catalog, counts, limits)
    assert dict(zip([o.id for o in catalog.offers], arrays.offer_left.tolist(), strict=True)) == {
        "a": False,
        "b": True,
    }
    assert surface_capped(counts, limits, SURFACE) is None
    counts.add("b", "c-b", SURFACE, 3)
    assert surface_capped(counts, limits, SURFACE) == "cap_surface_day"
    assert surface_capped(counts, limits, "tv_screensaver") is None
    assert surface_capped(counts, CapLimits(global_per_day=3), "tv_screensaver") == "cap_global_day"
    counts.add("b", "c-b", SURFACE, 4)  # a new local day: yesterday no longer counts
    assert (counts.total, counts.offer) == (1, {"b": 1})
    rows = [(s, k, 4, 1) for s, k, _ in counts.rows("b", "c-b", SURFACE)]
    assert CapCounts.load(rows, 4).offer == {"b": 1}
    assert CapCounts.load(rows, 5).total == 0


windows = st.lists(
    st.builds(
        QuietWindow, st.integers(0, MINUTES_PER_DAY - 1), st.integers(0, MINUTES_PER_DAY - 1)
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(windows, st.floats(0, MINUTES_PER_DAY - 1e-6))
def test_quiet_hours_end_where_no_window_holds(quiet: list[QuietWindow], minute: float) -> None:
    remaining = quiet_remaining(minute, quiet)
    inside = any(w.contains(minute) for w in quiet)
    assert (remaining is not None) == inside
    if remaining is not None:
        assert 0 < remaining <= MINUTES_PER_DAY
        if remaining < MINUTES_PER_DAY:  # not quiet all day long
            after = round((minute + remaining) % MINUTES_PER_DAY, 6)  # float dust aside
            assert not any(w.contains(after) for w in quiet)


def test_quiet_hours_cross_midnight_and_parse() -> None:
    night = QuietWindow(parse_hhmm("22:00"), parse_hhmm("07:00"))
    assert quiet_remaining(23 * 60, [night]) == 8 * 60
    assert quiet_remaining(6 * 60 + 30, [night]) == 30
    assert quiet_remaining(12 * 60, [night]) is None
    assert quiet_remaining(3 * 60, [night, QuietWindow(6 * 60, 9 * 60)]) == 6 * 60  # chained
    assert parse_hhmm("24:00") == 0
    for bad in ("7:0", "25:00", "12:60", "noon"):
        with pytest.raises(ValueError, match="not"):
            parse_hhmm(bad)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 5), max_size=30),
    st.lists(st.booleans(), min_size=30, max_size=30),
    st.integers(1, 6),
    st.booleans(),
)
def test_selection_is_diverse_bounded_and_never_shows_a_holdout(
    campaigns: list[int], held: list[bool], limit: int, explain: bool
) -> None:
    camp = np.array(campaigns, dtype=np.intp)
    held_out = np.array(held[: len(campaigns)], dtype=bool)
    picked = select(range(len(campaigns)), camp, held_out, limit, explain=explain)
    assert len(picked.shown) <= limit
    chosen = picked.shown + picked.counterfactual
    assert len({campaigns[i] for i in chosen}) == len(chosen)  # one per campaign
    assert not any(held_out[i] for i in picked.shown)
    assert all(held_out[i] for i in picked.counterfactual)
    # what is shown is what a walk without the held-out campaigns would show
    free = [i for i in range(len(campaigns)) if not held_out[i]]
    taken: set[int] = {campaigns[i] for i in picked.counterfactual}
    expect: list[int] = []
    for i in free:
        if campaigns[i] not in taken and len(expect) < limit:
            taken.add(campaigns[i])
            expect.append(i)
    assert picked.shown == expect
    if explain:
        assert sorted(chosen + [i for i, _ in picked.dropped if i not in chosen]) == list(
            range(len(campaigns))
        )


@settings(max_examples=60, deadline=None)
@given(offers(), st.integers(1, 8), st.booleans(), st.booleans())
def test_the_catalog_path_equals_the_list_path_and_holdouts_stay_off(
    model: Model, batch: list[Offer], limit: int, personalization: bool, explain: bool
) -> None:
    ctx = context()
    consent = Consent(analytics=True, personalization=personalization, marketing=True)
    plain = decide(model, batch, ctx, SURFACE, limit, NOW, consent, explain)
    catalog = build_catalog(batch)
    fast = decide_catalog(model, catalog, ctx, SURFACE, limit, NOW, consent, explain)
    assert [(r.offer.id, r.score) for r in fast.ranked] == [
        (r.offer.id, r.score) for r in plain.ranked
    ]
    device = "tv-0001"
    held = decide_catalog(
        model, catalog, ctx, SURFACE, limit, NOW, consent, explain, situation=Situation(device)
    )
    for r in held.ranked:
        assert not in_holdout(device, r.offer.campaign_id, r.offer.holdout)
        assert r.features is not None and len(r.features) == len(NAMES)
        assert r.reasons and isinstance(r.score, float)
    for r in held.counterfactual:
        assert in_holdout(device, r.offer.campaign_id, r.offer.holdout)
    shown = {r.offer.campaign_id for r in held.ranked}
    assert shown.isdisjoint({r.offer.campaign_id for r in held.counterfactual})


def test_quiet_hours_hold_everything_and_say_until_when(model: Model) -> None:
    ctx = context(local_hour=23.5)
    sit = Situation(quiet=(QuietWindow(22 * 60, 7 * 60),))
    catalog = build_catalog([make_offer("a"), make_offer("b")])
    decision = decide_catalog(model, catalog, ctx, SURFACE, 3, NOW, ALL, True, situation=sit)
    assert decision.ranked == []
    assert decision.held_until == NOW + timedelta(hours=7.5)
    assert sorted(decision.filtered) == [("a", "quiet_hours"), ("b", "quiet_hours")]


def test_targeting_on_personal_data_needs_personalization(model: Model) -> None:
    catalog = build_catalog(
        [
            make_offer("gold", targeting={"min_tier": 2}),
            make_offer("owners", targeting={"owns_any": ["purifier"]}),
            make_offer("tv-only", targeting={"profiles": ["tv"]}),
            make_offer("phone-only", targeting={"profiles": ["phone"]}),
        ]
    )
    ctx = context(member_tier=3, owned=frozenset({"purifier"}))
    full = decide_catalog(model, catalog, ctx, SURFACE, 10, NOW, ALL, True)
    assert {r.offer.id for r in full.ranked} == {"gold", "owners", "tv-only"}
    assert dict(full.filtered) == {"phone-only": "targeting"}
    no_perso = Consent(analytics=True, personalization=False, marketing=True)
    plain = decide_catalog(model, catalog, ctx, SURFACE, 10, NOW, no_perso, True)
    assert {r.offer.id for r in plain.ranked} == {"tv-only"}
    assert dict(plain.filtered) == {
        "gold": "targeting_needs_personalization",
        "owners": "targeting_needs_personalization",
        "phone-only": "targeting",
    }
