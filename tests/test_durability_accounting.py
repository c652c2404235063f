"""Aggregates at the gateway (latest snapshot wins, across reopen) and the loss checker's
accounting in raw and aggregate mode."""

from __future__ import annotations

from pathlib import Path

from agent.aggregates import aggregate_key, hit, seconds_of, window_end, window_label
from cloud_gateway.store import Store
from protocol.envelopes import Aggregate, Batch
from protocol.ids import utcnow
from simulators.checker import Drops, account, coverage


def snapshot(seq: int, count: int, key: str = "search") -> Batch:
    return Batch(
        device_id="tv-agg-1",
        seq=seq,
        sent_at=utcnow(),
        agent_version="0.1.0",
        aggregates=[Aggregate(window="1h:2026-11-27T06", key=key, count=count, seconds=0)],
    )


def test_cumulative_snapshots_latest_seq_wins_even_when_an_old_one_comes_late(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "gw.sqlite3")
    now = utcnow()
    assert store.store_batch_detail("tv-agg-1", snapshot(1, 5), now).aggregates == 1
    assert store.store_batch_detail("tv-agg-1", snapshot(3, 12), now).aggregates == 1
    # seq 2 (count 9) arrives after seq 3: stored as a batch, but it does not win.
    assert store.store_batch_detail("tv-agg-1", snapshot(2, 9), now).aggregates == 0
    assert store.store_batch_detail("tv-agg-1", snapshot(3, 12), now).new is False
    store.close()
    store = Store(tmp_path / "gw.sqlite3")
    export = store.export_device("tv-agg-1")
    assert export is not None
    assert [(a["key"], a["count"], a["seq"]) for a in export["aggregates"]] == [("search", 12, 3)]
    assert coverage(export) == 12
    view = store.get_device("tv-agg-1")
    assert view is not None and view["aggregates_cover"] == 12
    store.close()


def test_account_closes_only_when_every_signal_is_explained_once() -> None:
    accepted = {"d1": ["a", "b", "c", "d", "e"], "d2": ["x", "y"]}
    stored = {"d1": ["a", "b"], "d2": []}
    drops = {"d1": Drops(evicted=1, expired=1, withdrawn=0)}
    report = account(accepted, stored, drops, {"d1": 1, "d2": 2})
    assert report.ok, report.line()
    assert (report.accepted, report.stored, report.aggregated) == (7, 2, 3)
    missing = account(accepted, stored, drops, {"d2": 2})
    assert not missing.ok and missing.lost == 1
    double = account(accepted, {"d1": ["a", "b", "c"], "d2": []}, drops, {"d1": 1, "d2": 2})
    assert not double.ok and double.overcounted == 1
    dup = account({"d1": ["a"]}, {"d1": ["a", "a"]}, {})
    assert not dup.ok and dup.duplicated == 1
    assert "lost 0" in report.line()
    assert Drops.from_status({"accounting": {"evicted": 2, "withdrawn": 1}}).total == 3


def test_aggregate_windows_and_keys() -> None:
    at = 1_764_223_200.0 + 1234  # 2025-11-27T06:20:34Z
    assert window_label(at, 3600) == "1h:2025-11-27T06"
    assert window_end("1h:2025-11-27T06") == 1_764_223_200.0 + 3600
    assert window_label(at, 900) == "900s:2025-11-27T06:15:00"
    assert window_end("900s:2025-11-27T06:15:00") == 1_764_223_200.0 + 1800
    assert aggregate_key("search", {"query_len": 3}) == "search"
    assert aggregate_key("app_open", {"category": "games"}) == "app_open/category=games"
    # States the gateway targets on are part of the key (the count stays one per signal).
    level = {"category": "purifier_filter", "level": 0.125}
    assert (
        aggregate_key("consumable_level", level)
        == "consumable_level/category=purifier_filter/level=0.12"
    )
    assert aggregate_key("consumable_level", {"category": "x", "level": True}) == (
        "consumable_level/category=x"
    )
    assert aggregate_key("member_tier", {"tier": 7}) == "member_tier/tier=3"
    assert seconds_of({"seconds": True}) == 0.0 and seconds_of({"seconds": -5}) == 0.0
    assert hit("content_view", {"seconds": 30}, at, 3600).seconds == 30.0
