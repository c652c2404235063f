"""Aggregates at the gateway (latest snapshot wins, across reopen) and the loss checker's
accounting in raw and aggregate mode."""

from __future__ import annotations

from pathlib import Path

from agent.intake.aggregates import aggregate_key, hit, seconds_of, window_end, window_label
from cloud_gateway.db import migrations
from cloud_gateway.db.devices import aggregate_coverage, export_device, get_device
from cloud_gateway.db.ingest import store_batch_detail
from cloud_gateway.db.store import Store
from protocol.envelopes import Aggregate, Batch
from protocol.ids import utcnow
from simulators.checker import Drops, account, coverage
from tests.support.builders import gateway_db_before


def snapshot(seq: int, count: int, key: str = "search") -> Batch:
    return Batch(
        device_id="tv-agg-1",
        seq=seq,
        sent_at=utcnow(),
        agent_version="0.1.0",
        aggregates=[Aggregate(window="1h:2026-11-27T06", key=key, count=count, seconds=0)],
    )


def test_the_one_row_per_key_migration_keeps_each_keys_latest_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    row = "INSERT INTO aggregates (device_id, outbox_id, seq, window, key, count, seconds) VALUES"
    gateway_db_before(  # the old table allowed a row per seq; the store kept only the latest
        path,
        migrations.aggregates_one_row_per_key,
        [
            f"{row} ('tv-agg-1', '', 1, '1h:2026-11-27T06', 'search', 5, 1)",
            f"{row} ('tv-agg-1', '', 3, '1h:2026-11-27T06', 'search', 12, 3)",
            f"{row} ('tv-agg-1', '', 2, '1h:2026-11-27T06', 'app_open', 7, 2)",
            f"{row} ('tv-agg-1', 'b', 1, '1h:2026-11-27T06', 'search', 2, 4)",
        ],
    )
    store = Store(path)
    rows = store.conn.execute(
        "SELECT outbox_id, key, seq, count, seconds FROM aggregates ORDER BY outbox_id, key"
    ).fetchall()
    assert [tuple(r) for r in rows] == [
        ("", "app_open", 2, 7, 2),
        ("", "search", 3, 12, 3),
        ("b", "search", 1, 2, 4),
    ]
    now = utcnow()
    assert store_batch_detail(store, "tv-agg-1", snapshot(2, 9), now).aggregates == 0  # older
    assert store_batch_detail(store, "tv-agg-1", snapshot(4, 15), now).aggregates == 1
    assert aggregate_coverage(store, "tv-agg-1") == 7 + 15 + 2
    store.close()


def test_cumulative_snapshots_latest_seq_wins_even_when_an_old_one_comes_late(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "gw.sqlite3")
    now = utcnow()
    assert store_batch_detail(store, "tv-agg-1", snapshot(1, 5), now).aggregates == 1
    assert store_batch_detail(store, "tv-agg-1", snapshot(3, 12), now).aggregates == 1
    # seq 2 (count 9) arrives after seq 3: stored as a batch, but it does not win.
    assert store_batch_detail(store, "tv-agg-1", snapshot(2, 9), now).aggregates == 0
    assert store_batch_detail(store, "tv-agg-1", snapshot(3, 12), now).new is False
    store.close()
    store = Store(tmp_path / "gw.sqlite3")
    export = export_device(store, "tv-agg-1")
    assert export is not None
    assert [(a["key"], a["count"], a["seq"]) for a in export["aggregates"]] == [("search", 12, 3)]
    assert coverage(export) == 12
    view = get_device(store, "tv-agg-1")
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
