"""The gateway database's schema as ordered, decorated, transactional, recorded migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlite_utils import Database

from protocol.ids import format_time, utcnow

Migration = Callable[[Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register `fn` as the next migration; it is applied once, in a transaction, by name."""
    MIGRATIONS.append(fn)
    return fn


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


def apply_migrations(db: Database) -> list[str]:
    """Apply the migrations not yet recorded in `migrations`; return the names applied now."""
    conn = db.conn
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    applied_now: list[str] = []
    for fn in MIGRATIONS:
        with transaction(conn):
            # Checked inside the write lock: another process may have applied it meanwhile.
            done = conn.execute("SELECT 1 FROM migrations WHERE name = ?", [fn.__name__]).fetchone()
            if done:
                continue
            fn(db)
            conn.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (?, ?)",
                [fn.__name__, format_time(utcnow())],
            )
        applied_now.append(fn.__name__)
    return applied_now


@migration
def m001_initial(db: Database) -> None:
    db.create_table(
        "devices",
        {
            "device_id": str,
            "profile": str,
            "status": str,
            "first_seen": str,
            "last_seen": str,
            "agent_version": str,
            "model_version": int,
            "last_seq": int,
            "stats": str,
            "cohorts": str,
            "malformed": int,
        },
        pk="device_id",
        not_null=["status", "malformed"],
        defaults={"status": "offline", "malformed": 0},
    )
    db.create_table(
        "batches",
        {
            "device_id": str,
            "seq": int,
            "received_at": str,
            "sent_at": str,
            "signals": int,
            "aggregates": int,
            "outcomes": int,
            "receipts": str,
        },
        pk=("device_id", "seq"),
    )
    db.create_table(
        "signals",
        {"device_id": str, "id": str, "seq": int, "kind": str, "at": str, "attrs": str},
        pk=("device_id", "id"),
    )
    db.create_table(
        "aggregates",
        {
            "device_id": str,
            "seq": int,
            "window": str,
            "key": str,
            "count": int,
            "seconds": float,
        },
        pk=("device_id", "seq", "window", "key"),
    )
    db.create_table(
        "outcomes",
        {
            "device_id": str,
            "id": str,
            "seq": int,
            "offer_id": str,
            "campaign_id": str,
            "variant": str,
            "kind": str,
            "at": str,
            "surface": str,
            "score": float,
            "model_version": int,
        },
        pk=("device_id", "id"),
    )
    db.execute("CREATE INDEX outcomes_by_campaign ON outcomes (campaign_id, kind)")
    db.create_table(
        "claims",
        {
            "device_id": str,
            "id": str,
            "offer_id": str,
            "campaign_id": str,
            "at": str,
            "received_at": str,
            "result": str,
        },
        pk=("device_id", "id"),
    )
    db.create_table(
        "campaigns",
        {
            "id": str,
            "name": str,
            "state": str,
            "doc": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null=["name", "state", "doc"],
    )
    db.create_table(
        "pushes",
        {
            "id": int,
            "campaign_id": str,
            "cohort": str,
            "bundle_id": str,
            "offers": int,
            "at": str,
        },
        pk="id",
    )
    db.execute("CREATE INDEX pushes_by_campaign ON pushes (campaign_id)")
    db.create_table(
        "catalogs",
        {
            "cohort": str,
            "bundle_id": str,
            "offers": int,
            "published_at": str,
            "expires_at": str,
        },
        pk="cohort",
    )
    db.create_table(
        "tokens",
        {"id": str, "hash": str, "created_at": str, "revoked_at": str},
        pk="id",
        not_null=["hash", "created_at"],
    )
    db.execute("CREATE UNIQUE INDEX tokens_by_hash ON tokens (hash)")
    db.create_table(
        "audit",
        {"id": int, "who": str, "action": str, "target": str, "at": str, "detail": str},
        pk="id",
        not_null=["who", "action", "at"],
    )


@migration
def issue3_aggregates_latest(db: Database) -> None:
    """Aggregates are cumulative snapshots: find a device's row per (window, key) fast."""
    db.execute("CREATE INDEX aggregates_latest ON aggregates (device_id, window, key)")
