"""The store thread: one dedicated thread owns the SQLite connection; `await call(fn, ...)`.
Or, for many agents in one process (the simulator), a `StorePool` of a few threads shared by
every store, each store's calls still one at a time and in order.

Every table object (`agent.store.outbox.Outbox`, `agent.store.batches.Batches`, ...) is plain
synchronous code over `conn()` and `tx()`; the event loop reaches it only through `call`, so it
never blocks on disk and every statement runs on the one thread that owns the connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import StoreError
from agent.store.space import DiskSpace, is_full

T = TypeVar("T")


class StorePool:
    """A few threads shared by many stores instead of one thread per store: a process with
    thousands of agents (`edgemart fleet`) runs 4 threads, not thousands (each a stack, a
    kernel task, and a context switch per call; half of 400 agents' CPU was in the kernel)."""

    def __init__(self, threads: int = 4) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store-pool")

    def shutdown(self) -> None:
        """After every store using it closed."""
        self.executor.shutdown(wait=True)


class StoreThread:
    """One SQLite file, one thread (or a turn on a shared pool's), one connection;
    transactions with `tx()`."""

    def __init__(
        self,
        path: Path,
        *,
        durability: str = "full",
        factory: type[sqlite3.Connection] = sqlite3.Connection,
        pool: StorePool | None = None,
    ) -> None:
        """`factory`: the connection class (a test passes one that injects faults); `pool`:
        threads shared with other stores (None: a thread of its own)."""
        self.path = path
        self.durability = durability
        self._factory = factory
        self.wal_limit: int | None = None
        """Bytes the WAL may reach before a transaction truncates it (`quota.DiskPlan`)."""
        self._wal_path = path.with_name(path.name + "-wal")
        self.exclusive = False
        """Opened in exclusive locking mode (no room for `-shm` at start) until a restart."""
        self.space = DiskSpace(path.parent)
        """Free space, the reserve and the `full` state (`agent.store.core.Store` sizes it)."""
        self._pool = pool
        self._executor = (
            pool.executor
            if pool is not None
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-store")
        )
        self._turn = asyncio.Lock() if pool is not None else None
        """On a shared pool: one call of this store at a time, in the order they came."""
        self._held = threading.Lock()
        """On a shared pool, held while a call runs: a caller cancelled mid-call releases
        `_turn` while its call still runs on a pool thread; the next call waits here rather
        than use the connection from a second thread at once."""
        self._db: sqlite3.Connection | None = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the store thread, in a copy of the caller's context
        (a request's idempotency key reaches its write: `agent.store.idempotency`); its
        result or its exception."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        job = partial(context.run, self._run, fn, *args, **kwargs)
        if self._turn is None:
            return await loop.run_in_executor(self._executor, job)
        async with self._turn:
            return await loop.run_in_executor(self._executor, self._alone, job)

    def _alone(self, job: Callable[[], T]) -> T:
        with self._held:
            return job()

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn` on the store thread; an SQLite error leaves the store as ours (the boundary):
        DiskFull for a full disk, StoreError for any other (an I/O error, a lock)."""
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            if is_full(exc):
                raise self.space.on_full(exc) from exc
            raise StoreError(f"store failure: {exc}") from exc

    def connect(self) -> sqlite3.Connection:
        """Open the connection (on the store thread): WAL, the profile's durability.

        On a disk with no room even for the WAL's shared-memory file (`-shm`), the store opens
        in exclusive locking mode, where SQLite keeps that index in memory: the agent starts,
        reads what it holds and waits for room (`agent.store.space`) instead of failing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._open(exclusive=False)
        except sqlite3.Error as exc:
            if not (is_full(exc) or self.space.free_bytes() < self.space.reserve):
                raise
            self.space.on_full(exc)
            db = self._open(exclusive=True)
            self.exclusive = True
        self._db = db
        return db

    def _open(self, *, exclusive: bool) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path,
            isolation_level=None,
            factory=self._factory,
            # on a pool the connection moves between threads, one call at a time (`_turn`)
            check_same_thread=self._pool is None,
        )
        try:
            if exclusive:  # before the first access: no -shm file is ever made
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error:
            db.close()
            raise
        sync = "FULL" if self.durability == "full" else "NORMAL"
        db.execute(f"PRAGMA synchronous={sync}")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def shutdown(self) -> None:
        """No more calls: the thread ends once the last one is done (a shared pool's
        threads serve the other stores on)."""
        if self._pool is None:
            self._executor.shutdown(wait=True)

    def conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (`BEGIN IMMEDIATE` .. `COMMIT`, rolled back on any error).

        A full disk (SQLITE_FULL, ENOSPC) anywhere in it releases the reserve and raises
        `DiskFull` (`agent.store.space`): a state the callers answer, not a crash."""
        db = self.conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._raise_if_full(exc)
            raise
        try:
            yield db
        except BaseException as exc:
            self._rollback(db)
            self._raise_if_full(exc)
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(db)
            self._raise_if_full(exc)
            raise
        self._bound_wal(db)

    def _raise_if_full(self, exc: BaseException) -> None:
        """`exc` is a full disk: release the reserve and raise DiskFull from it."""
        if is_full(exc):
            raise self.space.on_full(exc) from exc

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        if db.in_transaction:  # SQLite may have rolled back already (a full disk does)
            db.execute("ROLLBACK")

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
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # committed already; the next one truncates it
                if not is_full(exc):
                    raise
                self.space.on_full(exc)
