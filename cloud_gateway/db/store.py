"""The SQLite backend of the store seam: `Store` (one connection, the session the query
functions get) and `Database` (the store thread that runs them: `await db.call(fn, ...)`).

`Store` is synchronous and owned by one thread; `Database` runs functions in a dedicated
single-thread executor so the event loop never blocks on SQLite. The SQL itself lives in the
query modules beside this one, by job; what is SQLite-only lives in `db/sqlite.py`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database as SqliteUtilsDatabase

from cloud_gateway.db.backend import Clock, Dialect, SignalRow
from cloud_gateway.db.migrations import apply_migrations
from cloud_gateway.db.sqlite import (
    SQLITE,
    Error,
    connect,
    hold_single_worker,
    refusal,
    transaction,
)
from cloud_gateway.db.thread import StoreThread
from cloud_gateway.errors import StoreError, StoreFull
from protocol.ids import format_time, utcnow

INSERT_SIGNALS = (
    "INSERT INTO signals (device_id, id, seq, kind, at, attrs, received_day)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
"""SQLite's signal rows: `executemany` (sqlite3 runs it in C at ~1 µs a row)."""

PROBE = "readyz-probe"
"""The name `check_writable` writes into `migrations` and rolls back: never committed."""
PROBE_BYTES = 64 * 1024
"""The size of the probe's row: it needs new pages, as a batch does (a tiny row fits in a
page's free space and passes on a full database)."""
MIN_FREE_BYTES = 8 * 1024 * 1024
"""Below this much free space beside the database, it is not ready to take writes: SQLite
appends to the WAL at each commit and fails with SQLITE_FULL once none is left."""


def free_bytes(path: Path | str) -> int | None:
    """Free space of the file system holding `path` (blocking: call on the store thread)."""
    try:
        return shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None


class Store:
    """One SQLite connection (WAL, synchronous=FULL), used only from the thread that made it."""

    def __init__(self, path: Path | str, *, clock: Clock = utcnow, worker: bool = False) -> None:
        """`worker`: this process is the gateway worker of the file, and the only one
        (`hold_single_worker`); CLIs and tests beside a running gateway pass False."""
        self.clock = clock
        self.dialect: Dialect = SQLITE
        self.path = path
        self._lock = hold_single_worker(path) if worker else None
        try:
            self.conn = connect(path)
            self.db = SqliteUtilsDatabase(self.conn)
            self.applied = apply_migrations(self.db, clock)
        except Error as exc:
            self._release()
            raise StoreError(refusal(path, exc)) from exc

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        self.conn.close()
        self._release()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with transaction(self.conn):
            yield

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        row = self.conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def insert_signals(self, groups: Sequence[Sequence[SignalRow]]) -> list[int]:
        return [
            max(self.conn.executemany(INSERT_SIGNALS, rows).rowcount, 0) if rows else 0
            for rows in groups
        ]

    def check_writable(self) -> None:
        """Enough free space beside the file; take the write lock, write a row that needs new
        pages, read it back, roll back: nothing is kept."""
        free = free_bytes(self.path)
        if free is not None and free < MIN_FREE_BYTES:
            raise StoreFull(
                f"the gateway database's disk has {free} bytes free (under {MIN_FREE_BYTES})",
                free_bytes=free,
            )
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute(
                    "INSERT INTO migrations (name, applied_at) VALUES (?, ?)",
                    [PROBE, format_time(self.clock()).ljust(PROBE_BYTES)],
                )
                found = self.one("SELECT name FROM migrations WHERE name = ?", [PROBE])
            finally:
                self.conn.execute("ROLLBACK")
        except Error as exc:
            raise StoreError(f"the gateway database is not writable: {exc}") from exc
        if found is None:
            raise StoreError("the gateway database did not read back its own write")

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self.rows("SELECT name FROM migrations ORDER BY rowid")]


class Database(StoreThread[Store]):
    """The SQLite `Backend`: a `Store` on its store thread,
    `await db.call(devices.get_device, device_id)`."""

    def __init__(self, path: Path | str, *, clock: Clock = utcnow, worker: bool = False) -> None:
        super().__init__(
            lambda: Store(path, clock=clock, worker=worker),
            SQLITE,
            clock,
            free_bytes=lambda: free_bytes(path),
        )
        self.path = path

    async def open(self) -> Database:
        await super().open()
        return self
