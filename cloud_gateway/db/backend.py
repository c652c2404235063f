"""The store seam: what a gateway database backend offers the rest of the gateway.

The gateway's domain code never opens a connection. It hands plain functions of `db/`'s query
modules (`ingest`, `devices`, `campaigns`, `claims`, `pushes`, `commands`, `tokens`, `audit`,
`registry`) to `Backend.call`, which runs them on the backend's store thread with its
session (`Store` for SQLite). A second backend (PostgreSQL, issue 12) implements the same
`Backend` and `Session` shapes; where its SQL differs it says so in its own `Dialect`.

The shared SQL is written portable where the dialects agree: `INSERT ... ON CONFLICT DO
NOTHING / DO UPDATE`, `RETURNING`, `coalesce`, no `INSERT OR ...`. It is written with `?`
placeholders (and `:name` where named); a backend whose driver wants `%s` translates them
once (`Dialect.placeholder`). SQLite-only expressions are taken from `Dialect`, never inlined.

Both drivers' connections look alike to the query functions (`Session.conn`: `execute`,
`executemany`, cursors with `fetchone`, `fetchall`, iteration, `rowcount`; rows indexed by
position or column name); their errors are caught as `Error`, either driver's root error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import psycopg

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound="Session")

Clock = Callable[[], datetime]
"""The one clock of the store: `protocol.ids.utcnow` in production, a fake one in tests."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """Facts of a backend's SQL where the dialects disagree."""

    name: str
    placeholder: str
    """`?` (sqlite3) or `%s` (psycopg): the shared SQL is written with `?`."""
    random_hex16: str
    """An SQL expression of 16 random hex digits, evaluated per row."""
    latest_reported_signals: str
    """One row per (device, kind, category) of the raw reports targeting reads (see
    `devices.device_facts`), the latest of each; one parameter (a device id, or NULL for all).
    Columns: device_id, seq, kind, at, tier, cat, level (JSON values as Python values)."""
    returning: bool = True
    """`INSERT/UPDATE ... RETURNING` is available (SQLite >= 3.35, PostgreSQL)."""


SignalRow = tuple[str, str, int, str, str, str, str]
"""(device_id, id, seq, kind, at, attrs, received_day) of table `signals`; `received_day`
(`YYYY-MM-DD`, UTC) is what retention goes by (`db/retention.py`)."""

Error = (sqlite3.Error, psycopg.Error)
"""Either driver's root error: query functions catch it and raise `StoreError` at the seam."""


class Cursor(Protocol):
    """What the query functions use of a cursor (sqlite3's, or the PostgreSQL session's)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the query functions use of a connection: `?` / `:name` placeholders."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...


class Session(Protocol):
    """One connection, owned by the store thread: what the query functions are given."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def conn(self) -> Connection: ...

    def transaction(self) -> AbstractContextManager[None]:
        """All or nothing: committed at the end of the block, rolled back on any error."""
        ...

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]: ...

    def one(self, sql: str, params: Any = ()) -> dict[str, Any] | None: ...

    def insert_signals(self, groups: Sequence[Sequence[SignalRow]]) -> list[int]:
        """Insert the signal rows of a group commit (one list per batch; existing keys
        skipped) inside the caller's transaction; how many were new, per batch. The one
        write whose form differs by backend for speed (executemany / COPY)."""
        ...

    def check_writable(self) -> None: ...

    def applied_migrations(self) -> list[str]: ...

    def close(self) -> None: ...


class Backend(Protocol[S]):
    """A gateway database: opened once, its functions run on one store thread."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def clock(self) -> Clock: ...

    async def open(self) -> Backend[S]: ...

    async def close(self) -> None: ...

    async def call(
        self, fn: Callable[Concatenate[S, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    async def check_writable(self) -> None:
        """A cheap real write and read (rolled back); raises StoreError when it fails."""
        ...

    def applied_migrations(self) -> list[str]:
        """The names of the migrations this backend has recorded, in order."""
        ...
