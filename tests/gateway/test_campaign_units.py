"""Campaign logic without I/O: validation errors with field paths, Wilson intervals, uplift,
targeting rules, the schedule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from cloud_gateway.campaigns.model import (
    CampaignIn,
    build_catalog,
    build_offers,
    due_action,
    new_campaign,
    transition,
)
from cloud_gateway.campaigns.results import uplift, wilson
from cloud_gateway.campaigns.targeting import (
    DeviceFacts,
    Targeting,
    parse_aggregate_key,
    selects,
    window_bounds,
)
from protocol.codec import field_errors
from protocol.ids import utcnow

OFFER = {"type": "coupon", "title": "x", "category": "games", "surfaces": ["tv_home_banner"]}


def _errors(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        CampaignIn.model_validate(body)
    return {e["loc"]: e["msg"] for e in field_errors(info.value)}


def test_invalid_campaigns_say_what_and_where() -> None:
    base = {"name": "c", "cohorts": ["all"], "offers": [OFFER]}
    errors = _errors({**base, "offers": [{**OFFER, "stock": 5}]})
    assert "stock is only for limited offers" in errors["offers.0"]
    errors = _errors({**base, "holdout": 0.9, "targeting": {"member_tiers": [7]}})
    assert {"holdout", "targeting.member_tiers.0"} <= set(errors)
    errors = _errors({**base, "targeting": {"rules": [{"kind": "no_purchase", "days": 0}]}})
    assert any(loc.startswith("targeting.rules.0") for loc in errors)
    errors = _errors({**base, "variants": {"a": 1, "b": 1}})
    assert "variants ['b'] have no offers" in errors["(root)"]


def test_wilson_interval_is_sound_at_the_edges() -> None:
    zero = wilson(0, 20)
    assert (zero.value, zero.low) == (0.0, 0.0)
    assert 0.1 < zero.high < 0.2  # not the degenerate [0, 0] of the normal approximation
    half = wilson(50, 100)
    assert half.low < 0.5 < half.high
    assert abs((half.high - half.low) - 0.19) < 0.01
    assert wilson(3, 0).n == 0


def test_uplift_against_holdout() -> None:
    result = uplift(300, 1000, 20, 200)
    assert result is not None
    assert result.absolute == pytest.approx(0.2)
    assert result.low < 0.2 < result.high
    assert result.low > 0  # clearly better than the holdout
    assert uplift(1, 10, 0, 0) is None


def test_rules_select_on_reported_facts() -> None:
    now = utcnow()
    targeting = Targeting.model_validate(
        {
            "regions": ["cn-east"],
            "rules": [
                {"kind": "no_purchase", "category": "appliances", "days": 30},
                {"kind": "consumable_below", "category": "purifier_filter", "level": 0.2},
            ],
        }
    )
    needs = DeviceFacts(
        "hub-1",
        "hub",
        frozenset({"all", "region:cn-east"}),
        levels={"purifier_filter": 0.1},
        last_purchase={"appliances": now - timedelta(days=40)},
    )
    assert selects(targeting, ["all"], needs, now)
    bought = DeviceFacts(
        "hub-2",
        "hub",
        frozenset({"all", "region:cn-east"}),
        levels={"purifier_filter": 0.1},
        last_purchase={"appliances": now - timedelta(days=3)},
    )
    assert not selects(targeting, ["all"], bought, now)
    unknown_level = DeviceFacts("hub-3", "hub", frozenset({"all", "region:cn-east"}))
    assert not selects(targeting, ["all"], unknown_level, now)
    elsewhere = DeviceFacts(
        "hub-4", "hub", frozenset({"all", "region:cn-north"}), levels={"purifier_filter": 0.1}
    )
    assert not selects(targeting, ["all"], elsewhere, now)
    assert not selects(None, ["profile:tv"], needs, now)  # outside the campaign's cohorts
    no_purchase = Targeting.model_validate(
        {"rules": [{"kind": "no_purchase", "category": "appliances", "days": 30}]}
    )
    silent = DeviceFacts("hub-5", "hub", frozenset({"all"}))
    assert not selects(no_purchase, ["all"], silent, now)  # no data is unknown, not "none"
    talking = DeviceFacts("hub-6", "hub", frozenset({"all"}), reported=True)
    assert selects(no_purchase, ["all"], talking, now)


def test_aggregate_labels_and_keys_parse() -> None:
    start, end = window_bounds("1h:2026-11-27T06") or (None, None)
    assert start is not None and end is not None and (end - start) == timedelta(hours=1)
    assert start.isoformat() == "2026-11-27T06:00:00+00:00"
    assert window_bounds("900s:2026-11-27T06:15:00") is not None
    assert window_bounds("1d:2026-11-27") is not None
    assert window_bounds("1h:garbage") is None and window_bounds("week:1") is None
    assert parse_aggregate_key("consumable_level/category=f/level=0.12") == (
        "consumable_level",
        {"category": "f", "level": "0.12"},
    )
    assert parse_aggregate_key("search") == ("search", {})


def test_push_mode_follows_targeting() -> None:
    now = utcnow()

    def campaign(**extra: Any) -> Any:
        spec = CampaignIn.model_validate(
            {"name": "c", "cohorts": ["all"], "offers": [OFFER], **extra}
        )
        return new_campaign(spec, now)

    assert campaign().push_cohorts == ["all"]
    assert campaign(targeting={"profiles": ["tv", "hub"]}).push_cohorts == [
        "profile:tv",
        "profile:hub",
    ]
    assert campaign(targeting={"profiles": ["tv"], "regions": ["cn-east"]}).per_device
    assert campaign(targeting={"member_tiers": [3]}).per_device


def test_schedule_moves_states_on_time() -> None:
    now = utcnow()
    spec = CampaignIn.model_validate(
        {
            "name": "c",
            "cohorts": ["all"],
            "offers": [OFFER],
            "starts_at": (now + timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(hours=2)).isoformat(),
        }
    )
    scheduled = transition(new_campaign(spec, now), "launch", now)
    assert scheduled.state == "scheduled"
    assert due_action(scheduled, now) is None
    later = now + timedelta(hours=1, seconds=1)
    assert due_action(scheduled, later) == "start"
    live = transition(scheduled, "start", later)
    assert live.state == "live"
    assert due_action(live, now + timedelta(hours=3)) == "end"
    assert transition(live, "end", now + timedelta(hours=3)).state == "ended"


def test_a_variant_weighted_zero_reaches_nobody() -> None:
    now = utcnow()
    spec = CampaignIn.model_validate(
        {
            "name": "c",
            "cohorts": ["all"],
            "variants": {"a": 1, "b": 0},
            "offers": [
                {**OFFER, "id": "oa", "variant": "a"},
                {**OFFER, "id": "ob", "variant": "b"},
            ],
        }
    )
    campaign = transition(new_campaign(spec, now), "launch", now)
    assert not campaign.per_device  # one live variant: a cohort catalog
    bundle, per_campaign = build_catalog("all", [campaign], now, timedelta(days=1))
    assert [o.id for o in bundle.offers] == ["oa"]
    assert per_campaign == {campaign.id: 1}
    assert build_offers(campaign, now, now + timedelta(days=1), variant="b") == []
