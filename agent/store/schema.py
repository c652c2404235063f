"""The store's schema as recorded migrations: decorated functions applied once each, in order."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    """Register a schema migration; they run in declaration order, each once, recorded."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_outbox(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE signals (id TEXT PRIMARY KEY, kind TEXT NOT NULL, at TEXT NOT NULL,"
        " attrs TEXT NOT NULL, priority INTEGER NOT NULL, expires_at REAL NOT NULL,"
        " created REAL NOT NULL, size INTEGER NOT NULL, batch_seq INTEGER)"
    )
    db.execute("CREATE INDEX signals_batch ON signals(batch_seq)")
    db.execute("CREATE INDEX signals_pending ON signals(created, id) WHERE batch_seq IS NULL")
    db.execute("CREATE INDEX signals_evict ON signals(priority, created) WHERE batch_seq IS NULL")
    db.execute(
        "CREATE TABLE outcomes (id TEXT PRIMARY KEY, offer_id TEXT NOT NULL,"
        " campaign_id TEXT NOT NULL, variant TEXT NOT NULL, kind TEXT NOT NULL,"
        " at TEXT NOT NULL, surface TEXT NOT NULL, score REAL, model_version INTEGER,"
        " created REAL NOT NULL, size INTEGER NOT NULL, batch_seq INTEGER)"
    )
    db.execute("CREATE INDEX outcomes_batch ON outcomes(batch_seq)")
    db.execute(
        "CREATE TABLE batches (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL,"
        " created REAL NOT NULL, sent_at REAL, attempts INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta(key, value) VALUES ('next_seq', '1')")
    db.execute("CREATE TABLE receipts (id TEXT PRIMARY KEY, batch_seq INTEGER)")


@migration
def m002_offers_consent(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE offers (source TEXT NOT NULL, id TEXT NOT NULL, bundle_id TEXT NOT NULL,"
        " offer TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (source, id))"
    )
    db.execute("CREATE TABLE seen_ids (id TEXT PRIMARY KEY, seen REAL NOT NULL)")
    db.execute("CREATE INDEX seen_ids_age ON seen_ids(seen)")
    db.execute(
        "CREATE TABLE consent (purpose TEXT PRIMARY KEY, granted INTEGER NOT NULL,"
        " version INTEGER NOT NULL, updated_at TEXT NOT NULL)"
    )


@migration
def m003_feature_buckets(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE feature_buckets (key TEXT NOT NULL, hour INTEGER NOT NULL,"
        " count INTEGER NOT NULL, PRIMARY KEY (key, hour))"
    )


@migration
def issue4_decisions(db: sqlite3.Connection) -> None:
    """Logged features and counterfactual flag on outcomes; daily cap counters; exposures for
    attribution; claims (one per offer, whatever happens)."""
    db.execute("ALTER TABLE outcomes ADD COLUMN features TEXT")
    db.execute("ALTER TABLE outcomes ADD COLUMN counterfactual INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE TABLE issue4_cap_counts (scope TEXT NOT NULL, key TEXT NOT NULL,"
        " day INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (scope, key, day))"
    )
    db.execute(
        "CREATE TABLE issue4_exposures (outcome_id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL,"
        " offer_id TEXT NOT NULL, variant TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL,"
        " surface TEXT NOT NULL, score REAL, model_version INTEGER, features TEXT,"
        " counterfactual INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("CREATE INDEX issue4_exposures_campaign ON issue4_exposures(campaign_id, kind, at)")
    db.execute(
        "CREATE TABLE issue4_claims (id TEXT PRIMARY KEY, offer_id TEXT NOT NULL UNIQUE,"
        " campaign_id TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,"
        " updated REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, code TEXT,"
        " reason TEXT NOT NULL DEFAULT '', result_id TEXT)"
    )


@migration
def issue3_outbox_quota(db: sqlite3.Connection) -> None:
    """Aggregate rows, persisted drop counters and the uplink's byte budget of the day."""
    db.execute(
        "CREATE TABLE aggregates (window TEXT NOT NULL, key TEXT NOT NULL,"
        " count INTEGER NOT NULL, seconds REAL NOT NULL, sent_count INTEGER NOT NULL DEFAULT 0,"
        " sent_seconds REAL NOT NULL DEFAULT 0, acked_count INTEGER NOT NULL DEFAULT 0,"
        " batch_seq INTEGER, dirty_since REAL, PRIMARY KEY (window, key))"
    )
    db.execute(
        "CREATE INDEX aggregates_dirty ON aggregates(dirty_since) WHERE dirty_since NOT NULL"
    )
    db.execute("CREATE INDEX aggregates_batch ON aggregates(batch_seq)")
    db.executemany(
        "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
        [
            ("dropped_evicted", "0"),
            ("dropped_expired", "0"),
            ("dropped_withdrawn", "0"),
            ("outcomes_withdrawn", "0"),
            ("signals_refused", "0"),
            ("budget_day", ""),
            ("budget_bytes", "0"),
        ],
    )


@migration
def issue3fix_outbox_id(db: sqlite3.Connection) -> None:
    """A random id of this outbox, made with the store: batches carry it, so the gateway can
    tell a wiped device's new `seq` 1 from the old one. Purged batches whose ack may still
    come (consent withdrawn while they were in flight)."""
    db.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('outbox_id', ?)", (uuid.uuid4().hex,)
    )
    db.execute(
        "CREATE TABLE withdrawn_batches (seq INTEGER PRIMARY KEY, signals INTEGER NOT NULL,"
        " outcomes INTEGER NOT NULL, created REAL NOT NULL)"
    )


@migration
def m007_decision_table_names(db: sqlite3.Connection) -> None:
    """The decision tables get names that say what they hold: `cap_counts` (daily impression
    caps), `exposures` (what a conversion is attributed to), `claims`; rows are kept."""
    db.execute("DROP INDEX IF EXISTS issue4_exposures_campaign")
    db.execute("ALTER TABLE issue4_cap_counts RENAME TO cap_counts")
    db.execute("ALTER TABLE issue4_exposures RENAME TO exposures")
    db.execute("ALTER TABLE issue4_claims RENAME TO claims")
    db.execute("CREATE INDEX exposures_campaign ON exposures(campaign_id, kind, at)")


@migration
def m008_idempotency(db: sqlite3.Connection) -> None:
    """Idempotency keys of the local API, committed with the rows of their request
    (`agent.store.idempotency`); outbox rows quarantined after failing to send."""
    db.execute(
        "CREATE TABLE idempotency (route TEXT NOT NULL, key TEXT NOT NULL,"
        " fingerprint TEXT NOT NULL, status INTEGER NOT NULL, answer TEXT NOT NULL,"
        " created REAL NOT NULL, PRIMARY KEY (route, key))"
    )
    db.execute("CREATE INDEX idempotency_age ON idempotency(created)")
    db.execute(
        "CREATE TABLE quarantine (id TEXT PRIMARY KEY, source TEXT NOT NULL,"
        " row TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL)"
    )
    db.executemany(
        "INSERT OR IGNORE INTO meta(key, value) VALUES (?, '0')",
        [("quarantined",), ("quarantine_dropped",)],
    )


@migration
def m009_batch_outbox_id(db: sqlite3.Connection) -> None:
    """Each batch remembers the outbox id it was cut under: an ack applies to the batches of
    its own outbox only (`agent.store.identity`: a copied store takes a new one)."""
    db.execute("ALTER TABLE batches ADD COLUMN outbox_id TEXT")
    row = db.execute("SELECT value FROM meta WHERE key = 'outbox_id'").fetchone()
    if row is not None:
        db.execute("UPDATE batches SET outbox_id = ?", (row[0],))


@migration
def m010_refused_counts(db: sqlite3.Connection) -> None:
    """Totals of batches the gateway refused for good (`Ack.refused`) and of aggregates such a
    refusal named (`agent.store.batches.Batches.refuse`)."""
    db.executemany(
        "INSERT OR IGNORE INTO meta(key, value) VALUES (?, '0')",
        [("batches_refused",), ("aggregates_refused",)],
    )


@migration
def m011_offer_kid(db: sqlite3.Connection) -> None:
    """Each held offer remembers the key that signed its bundle: a key revoked by a later key
    list takes what it signed off the device (issue 14). Rows of before: unknown (NULL)."""
    db.execute("ALTER TABLE offers ADD COLUMN kid TEXT")


@migration
def m012_social(db: sqlite3.Connection) -> None:
    """Group buys and price cuts (issue 19): requests stored before they are sent and resent
    until answered (`social_requests`), and the latest signed state of each group or cut this
    device is part of (`social_states`, the verified document as received)."""
    db.execute(
        "CREATE TABLE social_requests (id TEXT PRIMARY KEY, action TEXT NOT NULL,"
        " campaign_id TEXT, offer_id TEXT, code TEXT, created REAL NOT NULL,"
        " updated REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " state TEXT NOT NULL DEFAULT 'pending', ref TEXT, answer TEXT)"
    )
    db.execute(
        "CREATE TABLE social_states (ref TEXT PRIMARY KEY, kind TEXT NOT NULL,"
        " issued_at TEXT NOT NULL, doc TEXT NOT NULL)"
    )
