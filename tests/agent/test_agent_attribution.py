"""Attribution windows on a fake clock: a conversion goes to the campaign's newest click within
the click window, else its newest impression within the impression window, else nowhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.decide.decisions import Decisions
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from protocol.envelopes import Offer
from tests.support.clock import FakeClock

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SURFACE = "tv_home_banner"


def make_offer(oid: str) -> Offer:
    return Offer.model_validate(
        {
            "id": oid,
            "campaign_id": f"c-{oid}",
            "type": "coupon",
            "title": oid,
            "category": "groceries",
            "surfaces": [SURFACE],
            "starts_at": T0 - timedelta(days=30),
            "expires_at": T0 + timedelta(days=30),
        }
    )


CLOCK = FakeClock(T0)


@pytest.fixture
async def decisions(tmp_path: Path) -> AsyncIterator[Decisions]:
    settings = load_settings("tv", "dev-attr-01", "mqtt://127.0.0.1:1", tmp_path, environ={})
    policy = settings.profile.decisions
    assert (policy.attribution_click_days, policy.attribution_impression_days) == (7.0, 1.0)
    CLOCK.at(T0)
    store = Store(tmp_path / "agent.sqlite3", clock=CLOCK)
    await store.open()
    try:
        yield Decisions(settings, store, Metrics(), on_outcome=lambda: None)
    finally:
        await store.close()


async def test_a_conversion_after_an_impression_only_is_attributed_to_it(
    decisions: Decisions,
) -> None:
    offer = make_offer("seen")
    shown = await decisions.record(offer, "impression", SURFACE, CLOCK.at(T0), model_version=1)
    converted = await decisions.record(
        offer, "conversion", SURFACE, CLOCK.at(T0 + timedelta(hours=23)), model_version=1
    )
    assert converted["attributed_to"] == {"id": shown["id"], "kind": "impression"}
    assert converted["id"]


async def test_an_impression_older_than_its_window_is_not_attributed(
    decisions: Decisions,
) -> None:
    offer = make_offer("stale")
    await decisions.record(offer, "impression", SURFACE, CLOCK.at(T0), model_version=1)
    late = T0 + timedelta(days=1, seconds=1)
    missed = await decisions.record(offer, "conversion", SURFACE, CLOCK.at(late), model_version=1)
    assert missed["id"] is None
    assert "no impression in the last 1 d" in missed["reason"]


async def test_a_click_counts_for_seven_days_and_not_a_second_more(decisions: Decisions) -> None:
    offer = make_offer("clicked")
    await decisions.record(offer, "impression", SURFACE, CLOCK.at(T0), model_version=1)
    click = await decisions.record(
        offer, "click", SURFACE, CLOCK.at(T0 + timedelta(seconds=5)), model_version=1
    )
    within = T0 + timedelta(days=7)
    converted = await decisions.record(
        offer, "conversion", SURFACE, CLOCK.at(within), model_version=1
    )
    assert converted["attributed_to"] == {"id": click["id"], "kind": "click"}
    past = T0 + timedelta(days=7, seconds=6)
    missed = await decisions.record(offer, "conversion", SURFACE, CLOCK.at(past), model_version=1)
    assert missed["id"] is None
    assert "no click of campaign 'c-clicked' in the last 7 d" in missed["reason"]
