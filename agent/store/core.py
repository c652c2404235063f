"""The on-device SQLite store: outbox, batches in flight, offers, consent, replay ids, features.

One connection, used only from one dedicated thread: every async method runs its work in a
single-thread executor, so the event loop never blocks on disk. Writes are transactions;
`accept_signals` returns only after COMMIT. Schema changes are recorded migrations.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import QuotaExceeded, StoreError
from agent.intake.aggregates import AGGREGATE_ROW_CHARGE, AggregateHit, signal_charge
from agent.store import outbox
from agent.store.batches import (
    BatchRows,
)
from agent.store.decisions import DecisionRows
from agent.store.erasure import ErasureRows
from agent.store.offers import OfferRows
from agent.store.quota import DiskPlan
from agent.store.quota import plan as quota_plan
from agent.store.schema import MIGRATIONS

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NewSignal:
    id: str
    kind: str
    at: str
    attrs_json: str
    priority: int
    expires_at: float

    @property
    def size(self) -> int:
        return signal_charge(self.id, self.kind, self.at, self.attrs_json)


@dataclass(frozen=True, slots=True)
class NewOutcome:
    id: str
    offer_id: str
    campaign_id: str
    variant: str
    kind: str
    at: str
    surface: str
    score: float | None
    model_version: int | None

    @property
    def size(self) -> int:
        return 96 + len(self.id) + len(self.offer_id) + len(self.campaign_id) + len(self.surface)


@dataclass(frozen=True, slots=True)
class Pending:
    """What waits in the outbox for a batch: counts, and the age of the oldest item."""

    signals: int
    outcomes: int
    receipts: int
    oldest: float | None
    aggregates: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    """What one accepted request did to the outbox, beyond storing its signals."""

    evicted: int = 0
    expired: int = 0
    withdrawn: int = 0
    aggregated: int = 0


@dataclass(frozen=True, slots=True)
class ConsentRow:
    purpose: str
    granted: bool
    version: int
    updated_at: str


class Store(BatchRows, OfferRows, DecisionRows, ErasureRows):
    """Async facade over one SQLite file; all SQL runs on one dedicated thread."""

    def __init__(
        self,
        path: Path,
        *,
        durability: str = "full",
        outbox_max_bytes: int = 8 * 1024 * 1024,
        outbox_full: str = "evict",
        seen_ids_max: int = 10_000,
        clock: Callable[[], float] = time.time,
        disk_quota: int | None = None,
        cache_kib: int | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.durability = durability
        self.outbox_max_bytes = outbox_max_bytes
        self.disk_quota = disk_quota
        """Bytes the store's files (database, -wal, -shm) may take; given, the rows' budget
        `outbox_max_bytes` is what `agent.store.quota.plan` leaves of it."""
        self.cache_kib = cache_kib
        self.disk: DiskPlan | None = None
        self._wal_path = path.with_name(path.name + "-wal")
        self.outbox_full = outbox_full
        self.seen_ids_max = seen_ids_max
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-store")
        self._db: sqlite3.Connection | None = None
        # Maintained on the store thread; plain ints, read from the loop for status.
        self.signal_rows = 0
        self.outcome_rows = 0
        self.outbox_bytes = 0
        self.aggregate_unacked = 0  # signals counted in aggregates, not yet confirmed
        self.drops: dict[str, int] = {}  # persisted totals: evicted, expired, withdrawn, ...
        self.budget_day = ""
        self.budget_bytes = 0
        self.analytics_withdrawn = False  # analytics was granted, then withdrawn
        self.outbox_id = ""  # random, made with the store; batches carry it (issue 3 fix)

    @property
    def depth(self) -> int:
        """Signals and outcomes in the outbox, sent or not (they leave only on ack),
        plus signals counted in aggregates the gateway has not confirmed yet."""
        return self.signal_rows + self.outcome_rows + self.aggregate_unacked

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args))

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if self.durability == "full" else "NORMAL"
            db.execute(f"PRAGMA synchronous={sync}")
            db.execute("PRAGMA foreign_keys=ON")
            self._db = db
            self._migrate()
            self._plan_disk(db)
            with self._tx() as tx:
                # A row assigned to a batch that never got stored goes back to the queue.
                for table in ("signals", "outcomes", "receipts"):
                    tx.execute(
                        f"UPDATE {table} SET batch_seq = NULL WHERE batch_seq IS NOT NULL"  # noqa: S608
                        " AND batch_seq NOT IN (SELECT seq FROM batches)"
                    )
            self._recount()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc

    def _plan_disk(self, db: sqlite3.Connection) -> None:
        """Small WAL checkpoints, the WAL truncated after each, rows' budget from the quota."""
        (page,) = db.execute("PRAGMA page_size").fetchone()
        (btrees,) = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE rootpage > 0").fetchone()
        quota = self.disk_quota if self.disk_quota is not None else self.outbox_max_bytes
        disk = self.disk = quota_plan(quota, int(page), int(btrees))
        db.execute(f"PRAGMA wal_autocheckpoint={disk.wal_pages}")
        db.execute(f"PRAGMA journal_size_limit={disk.wal_limit}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a WAL left big by an older version
        if self.disk_quota is not None:
            self.outbox_max_bytes = disk.rows
        if self.cache_kib is not None:
            db.execute(f"PRAGMA cache_size={-max(64, self.cache_kib)}")

    async def shrink_memory(self) -> None:
        """Over the memory budget: SQLite frees what its page cache holds."""
        await self._run(self._shrink_memory)

    def _shrink_memory(self) -> None:
        if self._db is not None:
            self._db.execute("PRAGMA shrink_memory")

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _migrate(self) -> None:
        db = self._conn()
        db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        done = {row[0] for row in db.execute("SELECT name FROM migrations")}
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            with self._tx() as tx:
                fn(tx)
                tx.execute(
                    "INSERT INTO migrations(name, applied_at) VALUES (?, ?)", (name, time.time())
                )

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._bound_wal(db)

    def _bound_wal(self, db: sqlite3.Connection) -> None:
        """A transaction that pushed the WAL past what the plan reserves for it (a big
        request, a big eviction) is checkpointed and the WAL truncated at once. Below that,
        SQLite's own checkpoints (every `wal_pages`) and `journal_size_limit` keep it."""
        disk = self.disk
        if disk is None:
            return
        try:
            size = self._wal_path.stat().st_size
        except FileNotFoundError:
            return
        if size > 2 * disk.wal_limit:  # what the plan reserves for the WAL
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _recount(self) -> None:
        db = self._conn()
        s_rows, s_bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM signals"
        ).fetchone()
        o_rows, o_bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outcomes"
        ).fetchone()
        self.signal_rows, self.outcome_rows = int(s_rows), int(o_rows)
        self.outbox_bytes = outbox.outbox_bytes(db)
        self.aggregate_unacked = outbox.aggregate_unacked(db)
        self.drops = outbox.drop_counts(db)
        self.analytics_withdrawn = outbox.meta_int(db, "analytics_withdrawn") == 1
        self.budget_day, self.budget_bytes = outbox.budget(db)
        row = db.execute("SELECT value FROM meta WHERE key = 'outbox_id'").fetchone()
        self.outbox_id = str(row[0]) if row else ""
        del s_bytes, o_bytes

    # ------------------------------------------------------------ outbox

    async def accept_signals(
        self,
        signals: Sequence[NewSignal],
        buckets: Sequence[tuple[str, int, int]],
        *,
        hits: Sequence[AggregateHit] | None = None,
        withdrawn: bool = False,
    ) -> Accepted:
        """Store signals and their feature-bucket increments in ONE transaction.

        `hits` given: the signals are counted into aggregate rows instead of stored raw.
        `withdrawn`: analytics consent was withdrawn, so only the feature buckets are kept
        and the signals are counted as withdrawn (they never leave the device).
        At the quota: expired signals go first, then the lowest priority, then the oldest,
        each counted; QuotaExceeded (nothing stored) when the profile says refuse or when
        eviction cannot free enough.
        """
        return await self._run(
            self._accept_signals,
            list(signals),
            list(buckets),
            None if hits is None else list(hits),
            withdrawn,
        )

    def _accept_signals(
        self,
        signals: list[NewSignal],
        buckets: list[tuple[str, int, int]],
        hits: list[AggregateHit] | None,
        withdrawn: bool,
    ) -> Accepted:
        # Decided here, on the store thread, in order with the purge of a withdrawal.
        withdrawn = withdrawn or self.analytics_withdrawn
        raw = not withdrawn and hits is None
        now = self.clock()
        added = 0
        sizes = [s.size for s in signals] if raw else []
        try:
            with self._tx() as tx:
                if raw:
                    need = sum(sizes)
                elif withdrawn:
                    need = 0
                else:  # aggregate mode: new rows cost their charge, counting into old ones not
                    need = outbox.new_aggregate_rows(tx, hits or []) * AGGREGATE_ROW_CHARGE
                expired, evicted, freed, recount = self._make_room(tx, need, now)
                if raw:
                    tx.executemany(
                        "INSERT INTO signals(id, kind, at, attrs, priority, expires_at, created,"
                        " size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (s.id, s.kind, s.at, s.attrs_json, s.priority, s.expires_at, now, size)
                            for s, size in zip(signals, sizes, strict=True)
                        ],
                    )
                elif withdrawn:
                    outbox.meta_add(tx, "dropped_withdrawn", len(signals))
                else:
                    added = outbox.add_hits(tx, hits or [], now)
                if buckets:
                    tx.executemany(
                        "INSERT INTO feature_buckets(key, hour, count) VALUES (?, ?, ?)"
                        " ON CONFLICT(key, hour) DO UPDATE SET count = count + excluded.count",
                        buckets,
                    )
        except QuotaExceeded:
            self._count_refused(len(signals))
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store signals: {exc}") from exc
        aggregated = len(signals) if hits is not None and not withdrawn else 0
        if recount:  # aggregate rows were evicted: what they held is simplest read back
            self._recount()
        else:
            self.signal_rows += (len(signals) if raw else 0) - evicted - expired
            self.outbox_bytes += (need if raw else added) - freed
            self.drops["evicted"] = self.drops.get("evicted", 0) + evicted
            self.drops["expired"] = self.drops.get("expired", 0) + expired
            if withdrawn:
                self.drops["withdrawn"] = self.drops.get("withdrawn", 0) + len(signals)
            self.aggregate_unacked += aggregated
        return Accepted(evicted, expired, len(signals) if withdrawn else 0, aggregated)

    def _make_room(
        self, tx: sqlite3.Connection, need: int, now: float
    ) -> tuple[int, int, int, bool]:
        """(expired, evicted, bytes freed, aggregate rows evicted) to fit `need` more bytes
        under the quota: expired signals, then raw signals by priority and age, then
        aggregate rows (oldest window first)."""
        over = self.outbox_bytes + need - self.outbox_max_bytes
        if over <= 0:
            return 0, 0, 0, False
        gone = outbox.expire(tx, now)
        expired, freed = gone.expired, gone.bytes
        over -= freed
        if over > 0 and self.outbox_full == "refuse":
            raise QuotaExceeded(
                f"outbox at quota: {self.outbox_bytes - freed} of {self.outbox_max_bytes} bytes"
            )
        evicted = 0
        if over > 0:
            gone = outbox.evict(tx, over)
            evicted, freed, over = gone.evicted, freed + gone.bytes, over - gone.bytes
        if over > 0:
            gone = outbox.evict_aggregates(tx, over, now)
            if gone.bytes < over:
                raise QuotaExceeded("outbox at quota and nothing left to evict")
            return expired, evicted + gone.evicted, freed + gone.bytes, True
        return expired, evicted, freed, False

    def _count_refused(self, n: int) -> None:
        try:
            with self._tx() as tx:
                outbox.meta_add(tx, "signals_refused", n)
        except sqlite3.Error:
            return
        self.drops["refused"] = self.drops.get("refused", 0) + n

    async def add_outcome(self, outcome: NewOutcome) -> None:
        """An outcome with no decision facts (`record_decision_outcome` is the one insert)."""
        await self.record_decision_outcome(
            outcome, features=None, counterfactual=False, cap_rows=(), exposure=False
        )

    async def pending(self) -> Pending:
        return await self._run(self._pending)

    def _pending(self) -> Pending:
        db = self._conn()
        s_count, s_oldest = db.execute(
            "SELECT COUNT(*), MIN(created) FROM signals WHERE batch_seq IS NULL"
        ).fetchone()
        o_count, o_oldest = db.execute(
            "SELECT COUNT(*), MIN(created) FROM outcomes WHERE batch_seq IS NULL"
        ).fetchone()
        (r_count,) = db.execute("SELECT COUNT(*) FROM receipts WHERE batch_seq IS NULL").fetchone()
        a_count, a_oldest = outbox.aggregate_pending(db)
        olds = [x for x in (s_oldest, o_oldest, a_oldest) if x is not None]
        return Pending(
            int(s_count), int(o_count), int(r_count), min(olds) if olds else None, a_count
        )

    async def expire(self, now: float) -> int:
        """Delete unsent signals past their time to live; returns how many."""
        return await self._run(self._expire, now)

    def _expire(self, now: float) -> int:
        with self._tx() as tx:
            gone = outbox.expire(tx, now)
        self.signal_rows -= gone.expired
        self.outbox_bytes -= gone.bytes
        self.drops["expired"] = self.drops.get("expired", 0) + gone.expired
        return gone.expired

    # ------------------------------------------------------------ consent

    async def load_consent(self) -> list[ConsentRow]:
        return await self._run(self._load_consent)

    def _load_consent(self) -> list[ConsentRow]:
        rows = self._conn().execute("SELECT purpose, granted, version, updated_at FROM consent")
        return [ConsentRow(str(p), bool(g), int(v), str(u)) for p, g, v, u in rows]

    async def set_consent(
        self, purposes: dict[str, bool], updated_at: str, *, purge: bool = False
    ) -> int:
        """Store every purpose with the next consent version; returns that version.

        `purge` (analytics withdrawn): in the same transaction, everything the gateway has
        not acknowledged (waiting, or in batches cut but unacked) is deleted and counted as
        withdrawn.
        """
        return await self._run(self._set_consent, dict(purposes), updated_at, purge)

    def _set_consent(self, purposes: dict[str, bool], updated_at: str, purge: bool) -> int:
        with self._tx() as tx:
            if purge:
                outbox.purge_pending(tx, self.clock())
                outbox.meta_set(tx, "analytics_withdrawn", "1")
            elif purposes.get("analytics"):
                outbox.meta_set(tx, "analytics_withdrawn", "0")
            (current,) = tx.execute("SELECT COALESCE(MAX(version), 0) FROM consent").fetchone()
            version = int(current) + 1
            tx.executemany(
                "INSERT OR REPLACE INTO consent(purpose, granted, version, updated_at)"
                " VALUES (?, ?, ?, ?)",
                [(p, int(g), version, updated_at) for p, g in purposes.items()],
            )
        if purge:
            self._recount()
        self.analytics_withdrawn = purge or (
            self.analytics_withdrawn and not purposes.get("analytics")
        )
        return version

    async def fold_pending(self, window_s: int, limit: int = 2000) -> int:
        """Turn up to `limit` unsent raw signals into aggregates; returns how many."""
        return await self._run(self._fold_pending, window_s, limit)

    def _fold_pending(self, window_s: int, limit: int) -> int:
        with self._tx() as tx:
            folded, _ = outbox.fold_pending(tx, self.clock(), window_s, limit)
        if folded:
            self._recount()
        return folded

    # ------------------------------------------------------------ decisions (issue 4)

    def _issue4_outcome_extras(
        self, tx: sqlite3.Connection, outcomes: list[dict[str, Any]]
    ) -> None:
        """Add the logged features and the counterfactual flag to outcomes cut into a batch."""
        for outcome in outcomes:
            row = tx.execute(
                "SELECT features, counterfactual FROM outcomes WHERE id = ?", (outcome["id"],)
            ).fetchone()
            if row is None:
                continue
            if row[0]:
                outcome["features"] = json.loads(row[0])
            if row[1]:
                outcome["counterfactual"] = True
