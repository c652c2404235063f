"""Retention on both backends: with the backend's clock moved on, each kind's rows past its
policy are gone and the rest untouched (exact counts); on PostgreSQL whole days of signals go
by dropping their partition, and partitions are made ahead."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.ingest import store_batches
from cloud_gateway.db.postgres import PostgresDatabase
from cloud_gateway.db.retention import ensure_signal_partitions, signal_partitions
from cloud_gateway.db.store import Database
from cloud_gateway.ingest.retention import RetentionPolicy, enforce_retention
from protocol.envelopes import Aggregate, Batch
from tests.support.builders import make_batch

NOW = datetime(2026, 9, 1, 10, tzinfo=UTC)
AGES = (400 + 5, 200, 100, 40, 10, 0)
"""Days before NOW each round of batches was received."""
DEVICES, SIGNALS = 3, 4
POLICY = RetentionPolicy(signals=30, aggregates=90, outcomes=180, batches=400, chunk_rows=2)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def _batch(device_id: str, seq: int, received: datetime) -> Batch:
    base = make_batch(
        device_id, seq, SIGNALS, outcomes=[("camp-1", "offer-1", "impression")], features=[0.5, 1.0]
    )
    window = f"1d:{received:%Y-%m-%d}"
    aggregate = Aggregate(window=window, key="app_open/app=tv", count=seq, seconds=0.0)
    return base.model_copy(update={"aggregates": [aggregate]})


def _counts(store: Session) -> dict[str, int]:
    out = {}
    for table in ("signals", "aggregates", "outcomes", "outcome_features", "batches"):
        row = store.one(f"SELECT count(*) AS n FROM {table}")
        out[table] = int(row["n"]) if row else 0
    return out


async def test_data_past_its_policy_is_gone_and_the_rest_untouched(
    gateway_db: str | None, tmp_path: Path
) -> None:
    clock = Clock()
    db: Backend[Session] = (
        PostgresDatabase(gateway_db, clock=clock)
        if gateway_db is not None
        else Database(tmp_path / "gateway.db", clock=clock)
    )
    await db.open()
    try:
        if gateway_db is not None:  # 40 days ago has its partition; the other days do not
            await db.call(ensure_signal_partitions, (NOW - timedelta(days=40)).date(), 1)
        for seq, age in enumerate(AGES, start=1):
            received = NOW - timedelta(days=age)
            group = [(f"tv-ret-{d}", _batch(f"tv-ret-{d}", seq, received)) for d in range(3)]
            await db.call(store_batches, group, received)
        rounds = len(AGES)
        assert await db.call(_counts) == {
            "signals": rounds * DEVICES * SIGNALS,
            "aggregates": rounds * DEVICES,
            "outcomes": rounds * DEVICES,
            "outcome_features": rounds * DEVICES,
            "batches": rounds * DEVICES,
        }
        removed = await enforce_retention(db, POLICY)
        kept = {  # rounds younger than each policy (ages 10 and 0 for signals, ...)
            "signals": 2 * DEVICES * SIGNALS,
            "aggregates": 3 * DEVICES,
            "outcomes": 4 * DEVICES,
            "outcome_features": 4 * DEVICES,
            "batches": 5 * DEVICES,
        }
        assert await db.call(_counts) == kept
        assert removed["outcomes"] == 2 * DEVICES
        assert removed["batches"] == DEVICES
        if gateway_db is not None:
            assert removed["signal_partitions"] == 1  # 40 days ago: one DROP TABLE
            days = await db.call(signal_partitions)
            today = NOW.date()
            assert sorted(days) == [today + timedelta(days=n) for n in range(3)]
            # today's rows moved out of the default partition into today's
            row = await db.call(
                lambda s: s.one(
                    "SELECT count(*) AS n FROM signals_default WHERE received_day = ?",
                    [today.isoformat()],
                )
            )
            assert row == {"n": 0}
        # A second run a day later takes what just passed its policy, nothing else.
        clock.now = NOW + timedelta(days=21)
        await enforce_retention(db, POLICY)
        assert await db.call(_counts) == {**kept, "signals": 1 * DEVICES * SIGNALS}
        # The rows kept are those of the young days, untouched.
        ages = await db.call(lambda s: s.rows("SELECT DISTINCT seq FROM signals ORDER BY seq"))
        assert ages == [{"seq": len(AGES)}]
    finally:
        await db.close()


async def test_two_workers_making_the_same_partitions_at_once_make_each_once(
    postgres_url: str,
) -> None:
    clock = Clock()
    workers = [PostgresDatabase(postgres_url, clock=clock) for _ in range(2)]
    for db in workers:
        await db.open()
    try:
        first = (NOW + timedelta(days=200)).date()
        made = await asyncio.gather(
            *(db.call(ensure_signal_partitions, first, 5) for db in workers)
        )
        assert sum(made) == 5  # no error, and each day made by one of them
        days = await workers[0].call(signal_partitions)
        assert {first + timedelta(days=n) for n in range(5)} <= set(days)
    finally:
        for db in workers:
            await db.close()
