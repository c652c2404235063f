"""The store thread: one dedicated thread owns the SQLite connection; `await call(fn, ...)`.

Every table object (`agent.store.outbox.Outbox`, `agent.store.batches.Batches`, ...) is plain
synchronous code over `conn()` and `tx()`; the event loop reaches it only through `call`, so it
never blocks on disk and every statement runs on the one thread that owns the connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import StoreError

T = TypeVar("T")


class StoreThread:
    """One SQLite file, one thread, one connection; transactions with `tx()`."""

    def __init__(self, path: Path, *, durability: str = "full") -> None:
        self.path = path
        self.durability = durability
        self.wal_limit: int | None = None
        """Bytes the WAL may reach before a transaction truncates it (`quota.DiskPlan`)."""
        self._wal_path = path.with_name(path.name + "-wal")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-store")
        self._db: sqlite3.Connection | None = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the store thread, in a copy of the caller's context
        (a request's idempotency key reaches its write: `agent.store.idempotency`); its
        result or its exception."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, partial(context.run, fn, *args, **kwargs))

    def connect(self) -> sqlite3.Connection:
        """Open the connection (on the store thread): WAL, the profile's durability."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        sync = "FULL" if self.durability == "full" else "NORMAL"
        db.execute(f"PRAGMA synchronous={sync}")
        db.execute("PRAGMA foreign_keys=ON")
        self._db = db
        return db

    def disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def shutdown(self) -> None:
        """No more calls: the thread ends once the last one is done."""
        self._executor.shutdown(wait=True)

    def conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (`BEGIN IMMEDIATE` .. `COMMIT`, rolled back on any error)."""
        db = self.conn()
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
        if self.wal_limit is None:
            return
        try:
            size = self._wal_path.stat().st_size
        except FileNotFoundError:
            return
        if size > 2 * self.wal_limit:  # what the plan reserves for the WAL
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
