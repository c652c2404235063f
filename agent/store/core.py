"""The on-device store: opens one SQLite file on its thread and holds its tables.

A small façade: `thread` (`agent.store.thread.StoreThread`, the one connection and its
thread), `counters` (`agent.store.rows.Counters`, read from the loop) and plain synchronous
tables, each built here with the thread, the counters and the ONE injected clock. Callers run
table methods with `await store.call(store.outbox.accept, ...)`; writes are transactions and
`accept` returns only after COMMIT. Schema changes are recorded migrations (`schema`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import CorruptStore, DiskFull, StoreError
from agent.store import identity, outbox_sql, recovery
from agent.store.batches import Batches
from agent.store.claims import ClaimRows
from agent.store.consent import ConsentRows
from agent.store.decisions import DecisionLog
from agent.store.erasure import Erasure
from agent.store.idempotency import IdempotencyKeys
from agent.store.offers import FeatureBuckets, OfferRows
from agent.store.outbox import Outbox
from agent.store.quarantine import Quarantine
from agent.store.quota import DiskPlan
from agent.store.quota import plan as quota_plan
from agent.store.rows import Accepted, ConsentRow, Counters, NewOutcome, NewSignal, Pending
from agent.store.schema import MIGRATIONS
from agent.store.social import SocialRows
from agent.store.space import DiskSpace, reserve_for
from agent.store.thread import StorePool, StoreThread

__all__ = ["Accepted", "ConsentRow", "NewOutcome", "NewSignal", "Pending", "Store"]

log = logging.getLogger(__name__)
T = TypeVar("T")
MIN_QUOTA = 64 * 1024
"""The smallest quota a nearly full disk bounds the store to (it holds at least its schema)."""


class Store:
    """One SQLite file: its thread, its counters and its tables."""

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
        connection: type[sqlite3.Connection] = sqlite3.Connection,
        pool: StorePool | None = None,
    ) -> None:
        """`pool`: store threads shared with other agents of the process (`StorePool`)."""
        self.path = path
        self.clock = clock
        self.disk_quota = disk_quota
        """Bytes the store's files (database, -wal, -shm) may take; given, the rows' budget
        `outbox_max_bytes` is what `agent.store.quota.plan` leaves of it."""
        self.cache_kib = cache_kib
        self.disk: DiskPlan | None = None
        self.thread = StoreThread(path, durability=durability, factory=connection, pool=pool)
        self.space: DiskSpace = self.thread.space
        self.space.reserve = reserve_for(disk_quota if disk_quota is not None else outbox_max_bytes)
        self.quota_bytes = disk_quota if disk_quota is not None else outbox_max_bytes
        """The quota in force: the profile's, bounded by what the disk can give (`replan`)."""
        self.counters = Counters(outbox_max_bytes)
        self._rows_budget = outbox_max_bytes
        self._requeue_due = False
        self.replaced: dict[str, Any] | None = None
        self.replaced_now = False
        self.rotated = False
        """This open found the store copied here and took a new outbox id (`identity`)."""
        """This open replaced an unreadable store (the agent counts it: `stores_replaced`)."""
        """When this store replaced an unreadable one: `{"at", "reason", "moved_to"}`."""
        self._page_size = 4096
        self._btrees = 1
        self.outbox = Outbox(self.thread, self.counters, clock, outbox_full=outbox_full)
        self.batches = Batches(self.thread, self.counters, clock)
        self.consent = ConsentRows(self.thread, self.counters, clock)
        self.decisions = DecisionLog(self.thread, self.counters, clock)
        self.claims = ClaimRows(self.thread, clock)
        self.offers = OfferRows(self.thread, clock, seen_ids_max=seen_ids_max)
        self.buckets = FeatureBuckets(self.thread)
        self.erasure = Erasure(self.thread, self.counters, clock)
        self.idempotency = IdempotencyKeys(self.thread, clock)
        self.quarantine = Quarantine(self.thread)
        self.social = SocialRows(self.thread, clock)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a table method (or any `fn`) on the store thread."""
        return await self.thread.call(fn, *args, **kwargs)

    # ------------------------------------------------------------ what the loop reads

    @property
    def depth(self) -> int:
        return self.counters.depth

    @property
    def drops(self) -> dict[str, int]:
        return self.counters.drops

    @property
    def outbox_bytes(self) -> int:
        return self.counters.outbox_bytes

    @property
    def outbox_max_bytes(self) -> int:
        return self.counters.outbox_max_bytes

    @property
    def outbox_id(self) -> str:
        return self.counters.outbox_id

    @property
    def analytics_withdrawn(self) -> bool:
        return self.counters.analytics_withdrawn

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await self.thread.call(self._open)

    async def close(self) -> None:
        await self.thread.call(self.thread.disconnect)
        await asyncio.to_thread(self.thread.shutdown)  # joins the store thread: not on the loop

    async def shrink_memory(self) -> None:
        """Over the memory budget: SQLite frees what its page cache holds."""
        await self.thread.call(self._shrink_memory)

    def _shrink_memory(self) -> None:
        self.thread.conn().execute("PRAGMA shrink_memory")

    def _open(self) -> None:
        self.space.prepare()  # on a full disk the reserve goes first: the open needs room
        try:
            self._open_db()
        except CorruptStore as exc:
            self.thread.disconnect()
            moved = recovery.move_aside(self.path, self.clock())
            log.error(  # noqa: TRY400 - the reason is the message; no traceback helps here
                "store %s is unreadable (%s): moved aside to %s; a fresh, empty store starts"
                " (what the old outbox held is lost)",
                self.path,
                exc,
                moved.name,
            )
            self._open_db()
            self.replaced = {"at": self.clock(), "reason": str(exc), "moved_to": moved.name}
            self.replaced_now = True
            with self.thread.tx() as tx:
                outbox_sql.meta_set(tx, "store_replaced", json.dumps(self.replaced))
        else:
            row = (
                self.thread.conn()
                .execute("SELECT value FROM meta WHERE key = 'store_replaced'")
                .fetchone()
            )
            self.replaced = json.loads(row[0]) if row else None
        self.space.settle()
        self.replan()

    def _open_db(self) -> None:
        """Connect, check, migrate, plan the disk, re-queue, count; CorruptStore when SQLite
        cannot read the file, StoreError for any other failure."""
        try:
            db = self.thread.connect()
            damage = recovery.quick_check(db)
            if damage is not None:
                raise CorruptStore(f"integrity check failed: {damage}")
            self._migrate(db)
            try:
                with self.thread.tx() as tx:
                    self.rotated = identity.check(tx, self.path)
            except DiskFull:  # a copy found on a full disk takes its new id at the next open
                log.warning("store %s: cannot record where it lives (disk full)", self.path)
            self._plan_disk(db)
            try:
                self.requeue()
            except DiskFull:  # the rows wait; the next look at the disk re-queues them
                self._requeue_due = True
            self.counters.recount(db)
        except DiskFull as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            if recovery.is_corrupt(exc):
                raise CorruptStore(str(exc)) from exc
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc

    def requeue(self) -> None:
        """A row assigned to a batch that never got stored goes back to the queue."""
        with self.thread.tx() as tx:
            for table in ("signals", "outcomes", "receipts"):
                tx.execute(
                    f"UPDATE {table} SET batch_seq = NULL WHERE batch_seq IS NOT NULL"  # noqa: S608
                    " AND batch_seq NOT IN (SELECT seq FROM batches)"
                )

    def recheck_space(self) -> dict[str, Any]:
        """The maintenance loop's look at the disk: leave the `full` state when there is room
        again, bound the quota by the free space; what status reports."""
        if not self.space.recheck(force=True) and self._requeue_due:
            self.requeue()
            self._requeue_due = False
        self.replan()
        return self.space.to_json()

    def files_bytes(self) -> int:
        """What the store's files take on disk now (database, WAL, shared memory)."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += self.path.with_name(self.path.name + suffix).stat().st_size
            except FileNotFoundError:
                continue
        return total

    def replan(self) -> int:
        """The quota in force: the profile's, bounded by what the store holds plus the free
        space beyond the reserve (so eviction or refusal happens before the disk is full);
        checked at open and by the maintenance loop. Returns the rows' budget."""
        if self.disk is None:
            return self.counters.outbox_max_bytes
        room = self.files_bytes() + self.space.free_bytes() - self.space.reserve
        self.quota_bytes = max(MIN_QUOTA, min(self.disk.quota, room))
        rows = self.disk.rows if self.disk_quota is not None else self._rows_budget
        if self.quota_bytes < self.disk.quota:
            bounded = quota_plan(self.quota_bytes, self._page_size, self._btrees)
            rows = min(rows, bounded.rows)
        self.counters.outbox_max_bytes = rows
        return self.counters.outbox_max_bytes

    def _plan_disk(self, db: sqlite3.Connection) -> None:
        """Small WAL checkpoints, the WAL truncated after each, rows' budget from the quota."""
        (page,) = db.execute("PRAGMA page_size").fetchone()
        (btrees,) = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE rootpage > 0").fetchone()
        quota = self.disk_quota if self.disk_quota is not None else self.counters.outbox_max_bytes
        self._page_size, self._btrees = int(page), int(btrees)
        disk = self.disk = quota_plan(quota, int(page), int(btrees))
        db.execute(f"PRAGMA wal_autocheckpoint={disk.wal_pages}")
        db.execute(f"PRAGMA journal_size_limit={disk.wal_limit}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a WAL left big by an older version
        self.thread.wal_limit = disk.wal_limit
        if self.disk_quota is not None:
            self.counters.outbox_max_bytes = disk.rows
        if self.cache_kib is not None:
            db.execute(f"PRAGMA cache_size={-max(64, self.cache_kib)}")

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        done = {row[0] for row in db.execute("SELECT name FROM migrations")}
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            with self.thread.tx() as tx:
                fn(tx)
                tx.execute(
                    "INSERT INTO migrations(name, applied_at) VALUES (?, ?)", (name, self.clock())
                )

    def ping(self) -> bool:
        """The database answers a query (readiness); False when it does not."""
        try:
            self.thread.conn().execute("SELECT 1 FROM meta LIMIT 1").fetchone()
        except (sqlite3.Error, StoreError):
            return False
        return True
