"""The SQLite backend of the store seam: `Store` (one connection, the session the query
functions get) and `Database` (the store thread that runs them: `await db.call(fn, ...)`).

`Store` is synchronous and owned by one thread; `Database` runs functions in a dedicated
single-thread executor so the event loop never blocks on SQLite. The SQL itself lives in the
query modules beside this one, by job; what is SQLite-only lives in `db/sqlite.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlite_utils import Database as SqliteUtilsDatabase

from cloud_gateway.db.backend import Clock, Dialect
from cloud_gateway.db.migrations import apply_migrations
from cloud_gateway.db.sqlite import SQLITE, Error, connect, transaction
from cloud_gateway.errors import StoreError
from protocol.ids import format_time, utcnow

P = ParamSpec("P")
T = TypeVar("T")

PROBE = "readyz-probe"
"""The name `check_writable` writes into `migrations` and rolls back: never committed."""


class Store:
    """One SQLite connection (WAL, synchronous=FULL), used only from the thread that made it."""

    def __init__(self, path: Path | str, *, clock: Clock = utcnow) -> None:
        self.clock = clock
        self.dialect: Dialect = SQLITE
        try:
            self.conn = connect(path)
            self.db = SqliteUtilsDatabase(self.conn)
            self.applied = apply_migrations(self.db, clock)
        except Error as exc:
            raise StoreError(f"cannot open the gateway database {path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with transaction(self.conn):
            yield

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        row = self.conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def check_writable(self) -> None:
        """Take the write lock, write a row, read it back, roll back: nothing is kept."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute(
                    "INSERT INTO migrations (name, applied_at) VALUES (?, ?)",
                    [PROBE, format_time(self.clock())],
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


class Database:
    """The SQLite `Backend`: runs functions of a `Store` in one dedicated thread,
    `await db.call(devices.get_device, device_id)`."""

    def __init__(self, path: Path | str, *, clock: Clock = utcnow) -> None:
        self.path = path
        self.clock = clock
        self.dialect: Dialect = SQLITE
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
        self._store: Store | None = None
        self._migrations: list[str] = []

    async def open(self) -> Database:
        loop = asyncio.get_running_loop()
        store = await loop.run_in_executor(
            self._executor, lambda: Store(self.path, clock=self.clock)
        )
        self._store = store
        self._migrations = await self.call(Store.applied_migrations)
        return self

    async def call(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        store = self._store
        if store is None:
            raise StoreError("the gateway database is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(store, *args, **kwargs))

    async def check_writable(self) -> None:
        await self.call(Store.check_writable)

    def applied_migrations(self) -> list[str]:
        return list(self._migrations)

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=True)
