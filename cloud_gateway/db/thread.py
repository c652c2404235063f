"""The store thread: one session of a backend, used only from one dedicated thread, and the
functions of the query modules run there (`await db.call(fn, *args)`), so the event loop
never blocks on the database. Both backends (`Database`, `PostgresDatabase`) are one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, Generic, ParamSpec, TypeVar

from cloud_gateway.db.backend import Clock, Dialect, Session
from cloud_gateway.errors import StoreError

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound=Session)


class StoreThread(Generic[S]):
    """A `Backend`: `opener` makes the session on the thread at `open()`; `call` runs a
    function of it there; `close` closes it there and ends the thread."""

    def __init__(self, opener: Callable[[], S], dialect: Dialect, clock: Clock) -> None:
        self._opener = opener
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
        return await loop.run_in_executor(self._executor, lambda: fn(session, *args, **kwargs))

    async def check_writable(self) -> None:
        await self.call(lambda s: s.check_writable())

    def applied_migrations(self) -> list[str]:
        return list(self._migrations)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, session.close)
        # Joins the store thread: off the loop (its last work, the close, is done already).
        await asyncio.to_thread(self._executor.shutdown, True)
