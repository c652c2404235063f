"""What is SQLite-only in the gateway's store, in one place: connecting, pragmas, the write
lock, the dialect facts and the driver's error type.

Everything else in `db/` is SQL both backends share (see `db/backend.py`). SQLite-only:
`PRAGMA journal_mode=WAL / synchronous=FULL / foreign_keys=ON`, `BEGIN IMMEDIATE` (take the
write lock up front, so two writers wait instead of failing on upgrade), `randomblob`, and
the migrations of `db/migrations.py` (which use `sqlite-utils`, `json_each`, `WITHOUT ROWID`).
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from cloud_gateway.db.backend import Dialect
from cloud_gateway.errors import StoreError

Error = sqlite3.Error
"""The driver's root error: query functions wrap it in `StoreError` at the seam."""

LATEST_REPORTED_SIGNALS = (
    # SQLite-only: `json_extract`, and bare columns taken from the row that has max(at).
    # PostgreSQL's (`attrs::jsonb -> 'tier'`, `DISTINCT ON`) is in `db/postgres.py`.
    # A row whose attrs are not valid JSON (a `NaN` an older version stored, see
    # `db/finite.py`) reads as no attrs: one device's data never fails the query for all.
    "SELECT device_id, seq, kind, max(at) AS at, json_extract(a, '$.tier') AS tier,"
    " json_extract(a, '$.category') AS cat, json_extract(a, '$.level') AS level"
    " FROM (SELECT device_id, seq, kind, at,"
    " CASE WHEN json_valid(attrs) THEN attrs END AS a FROM signals"
    " WHERE kind IN ('member_tier', 'consumable_level', 'purchase')"
    " AND (CAST(? AS TEXT) IS NULL OR device_id = ?)) GROUP BY device_id, kind, cat"
)
"""`Dialect.latest_reported_signals` on SQLite: the latest `member_tier`, `consumable_level`
and `purchase` report per (device, kind, category)."""

SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    random_hex16="lower(hex(randomblob(8)))",
    latest_reported_signals=LATEST_REPORTED_SIGNALS,
    returning=sqlite3.sqlite_version_info >= (3, 35, 0),
)


DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
"""SQLite's words for a file that is not (or no longer) a whole database: garbage, a
truncated copy, a torn write."""


def refusal(path: Path | str, exc: sqlite3.Error) -> str:
    """The one line a gateway that cannot open its database ends with: which file, what is
    wrong with it and what the operator can do. A damaged file is never replaced silently:
    it may be the only copy of what devices sent."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in DAMAGED:
        return (
            f"the gateway database {path} is damaged ({exc}); the gateway leaves it as it is:"
            f" restore it from a backup, or move it aside (mv {path} {path}.damaged) to start"
            " with an empty one"
        )
    return f"cannot open the gateway database {path}: {exc}"


def connect(path: Path | str) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) in WAL mode, fsync on commit."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (autocommit connections only)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def hold_single_worker(path: Path | str) -> IO[bytes]:
    """One SQLite file serves one gateway worker: an exclusive `flock` on `PATH.lock` beside
    the database, held while the returned file stays open (the kernel drops it when the
    process dies). Raises StoreError when another worker holds it."""
    lock_path = Path(f"{path}.lock")
    handle = lock_path.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise StoreError(
            f"the gateway database {path} is in use by another gateway process: one SQLite"
            " file serves one worker (several workers share a PostgreSQL database:"
            " --db postgresql://...)"
        ) from exc
    return handle
