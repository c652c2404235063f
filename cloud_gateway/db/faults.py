"""What a driver's error means for the gateway: the disk is full, the store cannot write now,
or a failure. One reading for both backends, made where the store thread hands a result back
(`db/thread.py`), so everything above the seam sees `StoreFull` / `StoreUnavailable` /
`StoreError` and never a driver's own error.

- full: SQLite's `SQLITE_FULL` ("database or disk is full", also what it makes of ENOSPC),
  PostgreSQL's SQLSTATE 53100 `disk_full`, an `OSError` ENOSPC or EDQUOT;
- unavailable: SQLite's `SQLITE_IOERR` (any extended code) and `SQLITE_BUSY`, PostgreSQL's
  other class 53 states (out of memory, too many connections), 58030 `io_error` and a lost
  connection (class 08), an `OSError` EIO.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterator

import psycopg

from cloud_gateway.errors import StoreError, StoreFull, StoreUnavailable

SQLITE_UNAVAILABLE = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY})
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException) -> str | None:
    """`"full"`, `"unavailable"` or None for an error (or one it was raised from)."""
    for e in _chain(exc):
        if isinstance(e, StoreFull):
            return "full"
        if isinstance(e, StoreUnavailable):
            return "unavailable"
        if isinstance(e, sqlite3.Error):
            primary = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
            if primary == sqlite3.SQLITE_FULL:
                return "full"
            if primary in SQLITE_UNAVAILABLE:
                return "unavailable"
        elif isinstance(e, psycopg.Error):
            state = e.sqlstate or ""
            if state == "53100":
                return "full"
            if state.startswith(("53", "08")) or state == "58030":
                return "unavailable"
            if not state and isinstance(e, psycopg.OperationalError):
                return "unavailable"  # the connection is gone
        elif isinstance(e, OSError) and e.errno is not None:
            if e.errno in FULL_ERRNOS:
                return "full"
            if e.errno == errno.EIO:
                return "unavailable"
    return None


def as_store_error(exc: BaseException, free_bytes: Callable[[], int | None]) -> StoreError:
    """The `StoreError` to raise for `exc` (`exc` itself when it is one already and says
    nothing more); `free_bytes` is asked only when the disk is full."""
    kind = classify(exc)
    if kind == "full" and not isinstance(exc, StoreFull):
        return StoreFull(f"the gateway database's disk is full: {exc}", free_bytes=free_bytes())
    if kind == "unavailable" and not isinstance(exc, StoreUnavailable):
        return StoreUnavailable(f"the gateway database cannot write now: {exc}")
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"the gateway database failed: {exc}")
