"""The store thread: one session of a backend, used only from one dedicated thread, and the
functions of the query modules run there (`await db.call(fn, *args)`), so the event loop
never blocks on the database. Both backends (`Database`, `PostgresDatabase`) are one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, Generic, ParamSpec, TypeVar

from cloud_gateway.db.backend import Clock, Dialect, Error, Session
from cloud_gateway.db.faults import as_store_error
from cloud_gateway.errors import StoreError, StoreFull

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound=Session)

FULL_HOLD_S = 5.0
"""After a write failed for a full disk, readiness fails this long even if the (small,
rolled back) probe passes: the writes that matter are larger."""


def _no_free_bytes() -> int | None:
    return None


class StoreThread(Generic[S]):
    """A `Backend`: `opener` makes the session on the thread at `open()`; `call` runs a
    function of it there; `close` closes it there and ends the thread.

    Every error a function raises leaves as a `StoreError` (`db/faults.py`): `StoreFull`
    when the disk is full (then `free_bytes()`, on the store thread, says how much is left),
    `StoreUnavailable` when the store cannot write now, never a driver's own error."""

    def __init__(
        self,
        opener: Callable[[], S],
        dialect: Dialect,
        clock: Clock,
        free_bytes: Callable[[], int | None] = _no_free_bytes,
    ) -> None:
        self._opener = opener
        self._free_bytes = free_bytes
        self.full_at: float | None = None
        """`time.monotonic()` of the last write that failed for a full disk."""
        self.dialect = dialect
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
        self._session: S | None = None
        self._migrations: list[str] = []

    async def open(self) -> StoreThread[S]:
        loop = asyncio.get_running_loop()
        self._session = await loop.run_in_executor(self._executor, self._opener)
        self._migrations = await self.call(lambda s: s.applied_migrations())
        return self

    async def call(
        self, fn: Callable[Concatenate[S, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        session = self._session
        if session is None:
            raise StoreError("the gateway database is not open")
        loop = asyncio.get_running_loop()

        def run() -> T:
            try:
                return fn(session, *args, **kwargs)
            except (StoreError, *Error, OSError) as exc:
                failure = as_store_error(exc, self._free_bytes)
                if isinstance(failure, StoreFull):
                    self.full_at = time.monotonic()
                if failure is exc:
                    raise
                raise failure from exc

        return await loop.run_in_executor(self._executor, run)

    async def check_writable(self) -> None:
        """The session's probe (a write rolled back); and no write failed for a full disk
        in the last `FULL_HOLD_S`."""
        await self.call(lambda s: s.check_writable())
        since = self.full_at
        if since is not None and (age := time.monotonic() - since) < FULL_HOLD_S:
            raise StoreFull(
                f"the gateway database's disk was full {age:.1f} s ago",
                free_bytes=await self.call(lambda _: self._free_bytes()),
            )

    def applied_migrations(self) -> list[str]:
        return list(self._migrations)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, session.close)
        # Joins the store thread: off the loop (its last work, the close, is done already).
        await asyncio.to_thread(self._executor.shutdown, True)
