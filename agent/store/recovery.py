"""A database file that SQLite cannot read (not a database, malformed, truncated) is refused
with a clear message, moved aside with its WAL and shared-memory files
(`agent.sqlite3.corrupt-<UTC time>`, the newest `KEEP_ASIDE` sets kept for a post-mortem), and
a fresh store starts: the device keeps working. What was in the old outbox is lost, and said
so: counted and reported in status (`store.replaced`). Blocking: runs on the store thread."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

KEEP_ASIDE = 2
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
SUFFIXES = ("", "-wal", "-shm")


def is_corrupt(exc: BaseException) -> bool:
    """SQLITE_CORRUPT ("database disk image is malformed") or SQLITE_NOTADB."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


def quick_check(db: sqlite3.Connection) -> str | None:
    """Why the database is damaged (`PRAGMA quick_check`, the first problem), or None."""
    rows = db.execute("PRAGMA quick_check(1)").fetchall()
    first = str(rows[0][0]) if rows else "no answer"
    return None if first == "ok" else first


def move_aside(path: Path, now: float) -> Path:
    """Rename the database and its -wal/-shm to `<name>.corrupt-<time>`; the new name of the
    database. Older sets beyond `KEEP_ASIDE` are deleted (the disk is finite)."""
    stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in SUFFIXES:
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.replace(target.with_name(target.name + suffix))
    kept = sorted(path.parent.glob(f"{path.name}.corrupt-*[0-9]Z"), reverse=True)
    for old in kept[KEEP_ASIDE:]:
        for suffix in SUFFIXES:
            old.with_name(old.name + suffix).unlink(missing_ok=True)
    return target
