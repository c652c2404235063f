"""A campaign's trends per hour (pure fold and its SQL on both backends), the audience
preview, and editing a draft (its offer ids and stock replaced in one transaction)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from cloud_gateway.campaigns.model import Campaign, CampaignIn, new_campaign
from cloud_gateway.campaigns.reach import count_audience
from cloud_gateway.campaigns.targeting import DeviceFacts, Targeting
from cloud_gateway.campaigns.trends import campaign_trends, window_start
from cloud_gateway.db.backend import Session
from cloud_gateway.db.campaigns import create_campaign, get_campaign, replace_draft
from cloud_gateway.db.ingest import store_batch_detail
from cloud_gateway.db.trends import trend_rows
from cloud_gateway.errors import Conflict
from protocol.assign import in_holdout
from protocol.envelopes import Batch, Outcome, OutcomeKind
from protocol.ids import format_time, new_id

NOW = datetime(2026, 12, 6, 13, 40, tzinfo=UTC)
OFFER = {
    "id": "filter-20",
    "type": "replenishment",
    "title": "Filter -20%",
    "category": "purifier_filter",
    "surfaces": ["tv_home_banner"],
}


def _campaign(holdout: float = 0.0, **kw: object) -> Campaign:
    spec = CampaignIn.model_validate(
        {"name": "Filter week", "cohorts": ["profile:tv"], "offers": [OFFER], "holdout": holdout}
        | kw
    )
    return new_campaign(spec, NOW)


def _devices(campaign: Campaign, held: bool, n: int) -> list[str]:
    ids = (f"tv-{i:04d}" for i in range(10_000))
    return [d for d in ids if in_holdout(d, campaign.id, campaign.holdout) == held][:n]


def test_trends_fill_every_hour_leave_out_held_impressions_and_carry_intervals() -> None:
    campaign = _campaign(holdout=0.3)
    treated, held = _devices(campaign, False, 1)[0], _devices(campaign, True, 1)[0]
    rows = [
        ("2026-12-06T13", treated, "impression", 8),
        ("2026-12-06T13", treated, "click", 2),
        ("2026-12-06T13", treated, "conversion", 1),
        ("2026-12-06T13", held, "impression", 5),  # counterfactual: not shown
        ("2026-12-06T13", held, "conversion", 1),  # what happens without it: kept
        ("2026-12-06T11", treated, "impression", 4),
        ("2026-12-06T09", treated, "impression", 99),  # before the window
        ("2026-12-06T14", treated, "impression", 99),  # a clock ahead of ours
        ("2026-12-06T13", treated, "dismiss", 7),  # not a trend kind
    ]
    trends = campaign_trends(campaign, rows, NOW, hours=4)
    assert [h.hour for h in trends.series] == [
        "2026-12-06T10:00:00Z",
        "2026-12-06T11:00:00Z",
        "2026-12-06T12:00:00Z",
        "2026-12-06T13:00:00Z",
    ]
    assert trends.since == "2026-12-06T10:00:00Z"
    assert [h.impressions for h in trends.series] == [0, 4, 0, 8]
    last = trends.series[-1]
    assert (last.clicks, last.conversions) == (2, 2)
    assert last.ctr.value == 0.25 and last.ctr.low < 0.25 < last.ctr.high and last.ctr.n == 8
    assert trends.series[0].ctr.n == 0  # no impressions: no rate, not a made-up 0 %
    assert window_start(NOW, 1) == datetime(2026, 12, 6, 13, tzinfo=UTC)


def test_a_preview_counts_the_audience_and_its_holdout() -> None:
    facts = [
        DeviceFacts(f"tv-{i:04d}", profile="tv", cohorts=frozenset({"profile:tv"}))
        for i in range(40)
    ]
    facts += [DeviceFacts("hub-0001", profile="hub", cohorts=frozenset({"profile:hub"}))]
    seen = count_audience(None, ["profile:tv"], "c1", 0.5, facts, NOW)
    assert (seen.devices, seen.registered) == (40, 41)
    assert seen.held_out == sum(in_holdout(f"tv-{i:04d}", "c1", 0.5) for i in range(40))
    assert 0 < seen.held_out < 40
    picked = count_audience(Targeting(profiles=["hub"]), ["all"], "c1", 0.0, facts, NOW)
    assert (picked.devices, picked.held_out) == (1, 0)


def _outcomes(
    store: Session, device: str, campaign_id: str, at: datetime, kinds: list[OutcomeKind]
) -> None:
    outcomes = [
        Outcome(
            id=new_id(),
            offer_id="filter-20",
            campaign_id=campaign_id,
            kind=k,
            at=at,
            surface="tv_home_banner",
        )
        for k in kinds
    ]
    batch = Batch(
        device_id=device, seq=int(at.timestamp()), sent_at=at, agent_version="0", outcomes=outcomes
    )
    store_batch_detail(store, device, batch, at)


def test_trend_sql_counts_per_hour_device_and_kind(open_store: Callable[[], Session]) -> None:
    store = open_store()
    now = datetime.now(UTC)
    top = now.replace(minute=0, second=0, microsecond=0)
    _outcomes(
        store, "tv-0001", "c-1", top + timedelta(seconds=1), ["impression", "impression", "click"]
    )
    _outcomes(store, "tv-0002", "c-1", top - timedelta(hours=1), ["impression", "conversion"])
    _outcomes(store, "tv-0001", "c-1", top - timedelta(hours=5), ["impression"])  # too old
    _outcomes(store, "tv-0001", "c-2", top, ["impression"])  # another campaign
    rows = trend_rows(store, "c-1", format_time(top - timedelta(hours=2)))
    hour = top.strftime("%Y-%m-%dT%H")
    before = (top - timedelta(hours=1)).strftime("%Y-%m-%dT%H")
    assert sorted(rows) == sorted(
        [
            (hour, "tv-0001", "impression", 2),
            (hour, "tv-0001", "click", 1),
            (before, "tv-0002", "impression", 1),
            (before, "tv-0002", "conversion", 1),
        ]
    )


def test_a_draft_is_replaced_with_its_offer_ids_and_stock_once(
    open_store: Callable[[], Session],
) -> None:
    store = open_store()
    first = _campaign()
    other = _campaign(offers=[{**OFFER, "id": "other-1"}])
    create_campaign(store, first.doc(), stock=[], who="op", at=NOW, detail={})
    create_campaign(store, other.doc(), stock=[], who="op", at=NOW, detail={})
    limited = {**OFFER, "id": "filter-30", "limited": True, "stock": 50}
    edited = _campaign(name="Filter month", offers=[limited]).model_copy(update={"id": first.id})
    replace_draft(store, edited.doc(), stock=[("filter-30", 50)], who="op", at=NOW, detail={})
    doc = get_campaign(store, first.id)
    assert doc is not None and doc["name"] == "Filter month"
    ids = store.rows("SELECT offer_id FROM offer_ids WHERE campaign_id = ?", [first.id])
    assert ids == [{"offer_id": "filter-30"}]  # the old id is free again
    stock = store.rows("SELECT offer_id, stock FROM offer_stock WHERE campaign_id = ?", [first.id])
    assert stock == [{"offer_id": "filter-30", "stock": 50}]
    taken = edited.model_copy(update={"offers": [*edited.offers, *other.offers]})
    with pytest.raises(Conflict, match="other-1"):
        replace_draft(store, taken.doc(), stock=[], who="op", at=NOW, detail={})
    with store.transaction():
        store.conn.execute("UPDATE campaigns SET state = 'live' WHERE id = ?", [first.id])
    with pytest.raises(Conflict, match="no longer a draft"):
        replace_draft(store, edited.doc(), stock=[], who="op", at=NOW, detail={})
    assert get_campaign(store, first.id)["name"] == "Filter month"  # type: ignore[index]
