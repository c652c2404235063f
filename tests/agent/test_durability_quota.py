"""A simulated day offline at the outbox quota: exact eviction order and counts, disk under
the quota. Real SQLite files, an injected clock (a day passes in a second)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BatchTooLarge, QuotaExceeded
from agent.intake.aggregates import AGGREGATE_ROW_CHARGE, AggregateHit, hit
from agent.store.core import NewOutcome, NewSignal, Store
from agent.store.quota import plan as quota_plan
from protocol.ids import format_time
from tests.support.clock import FakeClock

DAY = 86_400.0
START = datetime(2026, 11, 27, tzinfo=UTC).timestamp()
KINDS = {  # kind: (priority, ttl in seconds)
    "app_open": (20, 6 * 3600.0),
    "content_view": (50, 7 * DAY),
    "purchase": (90, 30 * DAY),
}


@dataclass
class Row:
    id: str
    priority: int
    expires_at: float
    created: float
    order: int
    size: int


class Model:
    """The documented rule, written plainly: at the quota, drop every expired unsent
    signal, then the lowest priority, then the oldest, until the new ones fit."""

    def __init__(self, quota: int) -> None:
        self.quota = quota
        self.rows: dict[str, Row] = {}
        self.evicted: list[str] = []
        self.expired: list[str] = []

    def used(self) -> int:
        return sum(r.size for r in self.rows.values())

    def accept(self, rows: list[Row], now: float) -> None:
        need = sum(r.size for r in rows)
        over = self.used() + need - self.quota
        if over > 0:
            for r in [r for r in self.rows.values() if r.expires_at < now]:
                self.expired.append(r.id)
                over -= self.rows.pop(r.id).size
        if over > 0:
            for r in sorted(self.rows.values(), key=lambda r: (r.priority, r.created, r.order)):
                if over <= 0:
                    break
                self.evicted.append(r.id)
                over -= self.rows.pop(r.id).size
        for r in rows:
            self.rows[r.id] = r


def disk_bytes(path: Path) -> int:
    """What the store really takes on disk: the database file, its -wal and -shm files."""
    return sum(
        p.stat().st_size
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        if p.exists()
    )


def outbox_disk_bytes(path: Path) -> int:
    """Bytes of the SQLite pages the outbox's tables and indexes occupy (dbstat)."""
    with closing(sqlite3.connect(path)) as db:
        (total,) = db.execute(
            "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name LIKE 'signals%'"
            " OR name = 'sqlite_autoindex_signals_1'"
        ).fetchone()
    return int(total)


@pytest.mark.slow  # a whole simulated day against the real files (~12 s each): the slow tier
@pytest.mark.parametrize("seed", [1, 2])
async def test_a_day_offline_at_the_quota_evicts_in_order_and_stays_under_it(
    tmp_path: Path, seed: int
) -> None:
    quota = 680_480  # 660,000 before the schema grew by 5 b-trees (idempotency keys, quarantine)
    clock = FakeClock(START)
    path = tmp_path / "agent.sqlite3"
    store = Store(path, disk_quota=quota, clock=clock)
    await store.open()
    rows_budget = store.outbox_max_bytes  # what the quota leaves for rows (agent.quota)
    assert quota // 4 <= rows_budget < quota
    model = Model(rows_budget)
    biggest = 0
    rng = np.random.default_rng(seed)
    order = 0
    kinds = list(KINDS)
    kind_of: dict[str, str] = {}
    # One request a simulated minute for 24 hours, 1-5 signals each, mixed kinds.
    for minute in range(24 * 60):
        clock.now = START + minute * 60.0
        batch: list[NewSignal] = []
        rows: list[Row] = []
        for _ in range(int(rng.integers(1, 6))):
            kind = kinds[int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
            priority, ttl = KINDS[kind]
            attrs = json.dumps({"category": "games", "n": int(rng.integers(0, 10**6))})
            sid = f"{minute:05d}-{order:06d}"
            kind_of[sid] = kind
            sig = NewSignal(
                sid,
                kind,
                format_time(datetime.fromtimestamp(clock.now, UTC)),
                attrs,
                priority,
                clock.now + ttl,
            )
            batch.append(sig)
            rows.append(Row(sid, priority, clock.now + ttl, clock.now, order, sig.size))
            order += 1
        hour = int(clock.now // 3600)
        await store.call(store.outbox.accept, batch, [(f"kind:{s.kind}", hour, 1) for s in batch])
        model.accept(rows, clock.now)
        assert store.outbox_bytes <= rows_budget
        biggest = max(biggest, disk_bytes(path))

    with closing(sqlite3.connect(path)) as db:
        left = {r[0] for r in db.execute("SELECT id FROM signals")}
    assert left == set(model.rows)
    assert store.drops["evicted"] == len(model.evicted) > 0
    assert store.drops["expired"] == len(model.expired) > 0
    assert store.counters.signal_rows == len(model.rows)
    # Lowest priority first: no purchase was evicted, and app_opens went before content views.
    by_kind = {k: sum(1 for i in model.evicted if kind_of[i] == k) for k in KINDS}
    assert by_kind["purchase"] == 0
    assert by_kind["app_open"] > by_kind["content_view"] > 0
    assert outbox_disk_bytes(path) <= rows_budget
    # The disk: database, WAL and shared memory files together, at every step of the day.
    assert biggest <= quota, f"{biggest} bytes on disk for a quota of {quota}"
    await store.close()

    # The counts survive a restart (they are persisted, not kept in memory).
    store = Store(path, disk_quota=quota, clock=clock)
    await store.open()
    assert store.drops["evicted"] == len(model.evicted)
    assert store.drops["expired"] == len(model.expired)
    assert store.outbox_bytes == sum(r.size for r in model.rows.values())
    await store.close()


async def test_refuse_profile_answers_quota_exceeded_after_dropping_only_expired(
    tmp_path: Path,
) -> None:
    clock = FakeClock(START)
    store = Store(
        tmp_path / "r.sqlite3", outbox_max_bytes=20_000, outbox_full="refuse", clock=clock
    )
    await store.open()

    def sig(n: int, ttl: float) -> NewSignal:
        return NewSignal(
            f"s{n:04d}",
            "search",
            "2026-11-27T00:00:00Z",
            '{"q":"' + "x" * 300 + '"}',
            50,
            clock.now + ttl,
        )

    n = 0
    while store.outbox_bytes + sig(n, 0).size <= 20_000:
        await store.call(store.outbox.accept, [sig(n, 3600.0 if n % 2 else DAY)], [])
        n += 1
    with pytest.raises(QuotaExceeded):
        await store.call(store.outbox.accept, [sig(n, DAY)], [])
    kept = store.counters.signal_rows
    assert kept == n and store.drops["refused"] == 1
    clock.now += 2 * 3600.0  # half of them expire
    await store.call(store.outbox.accept, [sig(10_000, DAY)], [])
    assert store.drops["expired"] == n // 2
    assert store.drops["evicted"] == 0
    await store.close()


async def test_withdrawal_purges_pending_and_later_rows_never_enter_the_outbox(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.sqlite3"
    store = Store(path)
    await store.open()
    sigs = [NewSignal(f"s{i}", "search", "2026-11-27T00:00:00Z", "{}", 50, 4e9) for i in range(5)]
    await store.call(store.outbox.accept, sigs, [])
    await store.call(store.consent.set, {"analytics": False}, "2026-11-27T00:00:01Z", purge=True)
    assert store.depth == 0 and store.drops["withdrawn"] == 5
    await store.call(store.outbox.accept, sigs[:2], [("cat:games", 1, 2)])
    outcome = NewOutcome("o1", "offer", "c1", "a", "click", "2026-11-27T00:00:02Z", "s", 0.5, 1)
    await store.call(store.decisions.record_outcome, outcome)
    assert store.depth == 0
    assert store.drops["withdrawn"] == 7 and store.drops["outcomes_withdrawn"] == 1
    assert await store.call(store.buckets.load) == [
        ("cat:games", 1, 2)
    ]  # features still learn locally
    await store.close()
    store = Store(path)  # the withdrawal holds across a restart
    await store.open()
    assert store.analytics_withdrawn
    await store.call(store.outbox.accept, sigs[2:3], [])
    assert store.depth == 0 and store.drops["withdrawn"] == 8
    await store.call(store.consent.set, {"analytics": True}, "2026-11-27T00:00:03Z")
    await store.call(store.outbox.accept, sigs[3:4], [])
    assert store.depth == 1
    await store.close()


def test_the_disk_plan_leaves_rows_what_fixed_pages_wal_and_shm_do_not_take() -> None:
    plan = quota_plan(16 * 1024 * 1024, 4096, 37)
    assert plan.wal_pages == 128 and plan.wal_limit == 32 + 128 * (4096 + 24)
    assert plan.rows == plan.quota - plan.reserved
    assert plan.reserved == 38 * 4096 + 2 * plan.wal_limit + 32 * 1024
    tiny = quota_plan(100_000, 4096, 37)  # cannot be honoured: a quarter still goes to rows
    assert tiny.wal_pages == 8 and tiny.rows == 25_000


def hits_for(keys: range, at: float) -> list[AggregateHit]:
    return [hit("search", {"category": f"c{k}"}, at, 3600) for k in keys]


def agg_signals(n: int, tag: str) -> list[NewSignal]:
    return [
        NewSignal(f"{tag}{i:05d}", "search", "2026-11-27T00:00:00Z", "{}", 50, 4e9)
        for i in range(n)
    ]


async def test_aggregate_rows_are_charged_against_the_quota_and_evicted_oldest_window_first(
    tmp_path: Path,
) -> None:
    clock = FakeClock(START)
    quota = 40 * AGGREGATE_ROW_CHARGE
    store = Store(tmp_path / "a.sqlite3", outbox_max_bytes=quota, clock=clock)
    await store.open()
    accepted = 0
    for hour in range(6):  # 6 hours x 20 keys: 120 rows would need 3x the quota
        clock.now = START + hour * 3600.0 + 1
        done = await store.call(
            store.outbox.accept,
            agg_signals(20, f"h{hour}-"),
            [],
            hits=hits_for(range(20), clock.now),
        )
        accepted += 20
        assert done.aggregated == 20
        assert store.outbox_bytes <= quota
    with closing(sqlite3.connect(tmp_path / "a.sqlite3")) as db:
        rows = db.execute("SELECT COUNT(*), SUM(count), MIN(window) FROM aggregates").fetchone()
    assert rows[0] * AGGREGATE_ROW_CHARGE == store.outbox_bytes <= quota
    # The oldest windows went first; every signal is in a row or counted as evicted.
    assert rows[2] > "1h:2026-11-27T01"
    assert rows[1] + store.drops["evicted"] == accepted
    assert store.counters.aggregate_unacked == rows[1]
    await store.close()


async def test_aggregate_mode_refuses_new_rows_at_the_quota(tmp_path: Path) -> None:
    clock = FakeClock(START + 1)
    quota = 10 * AGGREGATE_ROW_CHARGE
    store = Store(tmp_path / "r.sqlite3", outbox_max_bytes=quota, outbox_full="refuse", clock=clock)
    await store.open()
    await store.call(
        store.outbox.accept, agg_signals(10, "a"), [], hits=hits_for(range(10), clock.now)
    )
    # Counting into existing rows costs nothing: still accepted at the quota.
    await store.call(
        store.outbox.accept, agg_signals(10, "b"), [], hits=hits_for(range(10), clock.now)
    )
    with pytest.raises(QuotaExceeded):
        await store.call(
            store.outbox.accept, agg_signals(1, "c"), [], hits=hits_for(range(10, 11), clock.now)
        )
    assert store.drops["refused"] == 1 and store.counters.aggregate_unacked == 20
    assert store.outbox_bytes == quota
    await store.close()


def build_plain(
    seq: int,
    signals: list[dict[str, object]],
    outcomes: list[dict[str, object]],
    receipts: list[str],
    aggregates: list[dict[str, object]],
) -> bytes:
    return json.dumps({"seq": seq, "signals": [s["id"] for s in signals]}).encode()


async def test_withdrawal_purges_batches_cut_but_unacked_and_a_late_ack_undoes_the_count(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "w.sqlite3")
    await store.open()
    await store.call(store.outbox.accept, agg_signals(30, "s"), [])
    cut = {}
    for _ in range(3):  # three batches of 10: two published, one only cut
        batch = await store.call(
            store.batches.cut,
            max_signals=10,
            max_outcomes=10,
            max_receipts=10,
            include_data=True,
            build=build_plain,
        )
        assert batch is not None
        cut[batch.seq] = batch
    await store.call(store.batches.mark_sent, 1)
    await store.call(store.batches.mark_sent, 2)
    await store.call(store.consent.set, {"analytics": False}, "2026-11-27T00:00:01Z", purge=True)
    # Nothing left to send: the cut batches are gone with their signals, all counted.
    assert await store.call(store.batches.stored) == []
    assert store.depth == 0 and store.outbox_bytes == 0
    assert store.drops["withdrawn"] == 30
    # Batch 1 had reached the gateway: its ack comes late, its signals are stored after all.
    result = await store.call(store.batches.ack, [1])
    assert result.seqs == (1,) and result.signals == 10
    assert store.drops["withdrawn"] == 20
    assert (
        await store.call(store.batches.ack, [1, 3])
    ).seqs == ()  # once only; batch 3 was never published
    await store.close()
    store = Store(tmp_path / "w.sqlite3")
    await store.open()
    assert store.drops["withdrawn"] == 20 and store.depth == 0
    await store.close()


async def test_a_batch_over_the_size_bounds_is_cut_smaller_keeping_the_drain_order(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "b.sqlite3")
    await store.open()
    await store.call(store.outbox.accept, agg_signals(100, "s"), [])
    tried: list[int] = []

    def build_at_most_30(
        seq: int,
        signals: list[dict[str, object]],
        outcomes: list[dict[str, object]],
        receipts: list[str],
        aggregates: list[dict[str, object]],
    ) -> bytes:
        tried.append(len(signals))
        if len(signals) > 30:
            raise BatchTooLarge(len(signals) * 1000, 0)
        return build_plain(seq, signals, outcomes, receipts, aggregates)

    sizes = []
    while True:
        batch = await store.call(
            store.batches.cut,
            max_signals=100,
            max_outcomes=10,
            max_receipts=10,
            include_data=True,
            build=build_at_most_30,
        )
        if batch is None:
            break
        sizes.append(len(json.loads(batch.payload)["signals"]))
        assert json.loads(batch.payload)["seq"] == batch.seq == len(sizes)  # no seq skipped
    assert tried[:3] == [100, 50, 25] and sum(sizes) == 100 and max(sizes) <= 30
    await store.close()
