"""What is SQLite-only in the gateway's store, in one place: connecting, pragmas, the write
lock, the dialect facts and the driver's error type.

Everything else in `db/` is SQL both backends share (see `db/backend.py`). SQLite-only:
`PRAGMA journal_mode=WAL / synchronous=FULL / foreign_keys=ON`, `BEGIN IMMEDIATE` (take the
write lock up front, so two writers wait instead of failing on upgrade), `randomblob`, and
the migrations of `db/migrations.py` (which use `sqlite-utils`, `json_each`, `WITHOUT ROWID`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloud_gateway.db.backend import Dialect

Error = sqlite3.Error
"""The driver's root error: query functions wrap it in `StoreError` at the seam."""

SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    random_hex16="lower(hex(randomblob(8)))",
    returning=sqlite3.sqlite_version_info >= (3, 35, 0),
)


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


LATEST_REPORTED_SIGNALS = (
    # SQLite-only: `json_extract`, numbered `?1` parameters, and bare columns taken from the
    # row that has max(at). PostgreSQL: `attrs::jsonb ->> 'tier'` and `DISTINCT ON`.
    "SELECT device_id, seq, kind, max(at) AS at, json_extract(attrs, '$.tier') AS tier,"
    " json_extract(attrs, '$.category') AS cat, json_extract(attrs, '$.level') AS level"
    " FROM signals WHERE kind IN ('member_tier', 'consumable_level', 'purchase')"
    " AND (?1 IS NULL OR device_id = ?1) GROUP BY device_id, kind, cat"
)
"""One row per (device, kind, category) of the raw reports targeting reads (see
`devices.device_facts`): the latest `member_tier`, `consumable_level` and `purchase`."""
