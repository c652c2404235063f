"""SQL of retention: rows received before a kind's cutoff day deleted in bounded chunks, and
on PostgreSQL the daily partitions of `signals` created ahead and dropped whole.

Every kept kind carries the day it was received (`received_day`, `YYYY-MM-DD` UTC; batches go
by `received_at`); a row is past its policy when that day is before the cutoff day. Plain
functions over a session, run on the store thread; each chunk is its own transaction, so
ingest commits between chunks. The loop that calls them is `ingest/retention.py`.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

from cloud_gateway.db.backend import Error, Session
from cloud_gateway.errors import StoreError

CHUNKS: dict[str, tuple[str, ...]] = {
    # kind: the statements deleting one chunk (`?` cutoff day, `?` chunk rows), in order.
    "signals": (
        "DELETE FROM signals WHERE (device_id, id) IN (SELECT device_id, id FROM signals"
        " WHERE received_day < ? LIMIT ?)",
    ),
    "aggregates": (
        'DELETE FROM aggregates WHERE (device_id, outbox_id, "window", key) IN'
        ' (SELECT device_id, outbox_id, "window", key FROM aggregates'
        " WHERE received_day < ? LIMIT ?)",
    ),
    "outcomes": (
        # The features each decision used go with their outcome (the same key).
        "DELETE FROM outcome_features WHERE (device_id, id) IN (SELECT device_id, id"
        " FROM outcomes WHERE received_day < ? LIMIT ?)",
        "DELETE FROM outcomes WHERE (device_id, id) IN (SELECT device_id, id FROM outcomes"
        " WHERE received_day < ? LIMIT ?)",
    ),
    "batches": (
        # `received_at` is RFC 3339: it sorts before the cutoff day exactly when its day does.
        "DELETE FROM batches WHERE (device_id, outbox_id, seq) IN (SELECT device_id,"
        " outbox_id, seq FROM batches WHERE received_at < ? LIMIT ?)",
    ),
}
PG_SIGNALS_DEFAULT_CHUNK = (
    "DELETE FROM signals_default WHERE (device_id, id, received_day) IN (SELECT device_id,"
    " id, received_day FROM signals_default WHERE received_day < CAST(? AS date) LIMIT ?)"
)
"""PostgreSQL: signals of days that had no partition, past their policy."""
PARTITION = re.compile(r"^signals_p(\d{8})$")


def partition_name(day: date) -> str:
    return f"signals_p{day:%Y%m%d}"


def delete_chunk(store: Session, kind: str, cutoff: date, limit: int) -> int:
    """Delete at most `limit` rows of `kind` received before `cutoff`, in one transaction;
    how many went (of the kind's own table). On PostgreSQL `signals` deletes only from its
    default partition (whole days go by `drop_signal_partitions`)."""
    statements = CHUNKS[kind]
    if kind == "signals" and store.dialect.name == "postgresql":
        statements = (PG_SIGNALS_DEFAULT_CHUNK,)
    deleted = 0
    try:
        with store.transaction():
            for sql in statements:
                deleted = store.conn.execute(sql, [cutoff.isoformat(), limit]).rowcount
    except Error as exc:
        raise StoreError(f"cannot delete old {kind}: {exc}") from exc
    return max(deleted, 0)


def signal_partitions(store: Session) -> dict[date, str]:
    """PostgreSQL: the daily partitions of `signals` (day -> table), the default left out."""
    rows = store.rows(
        "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'signals'::regclass"
    )
    out = {}
    for r in rows:
        found = PARTITION.match(r["name"])
        if found:
            digits = found.group(1)
            out[date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))] = r["name"]
    return out


PARTITION_LOCK_KEY = 0x65646D67_70617274
"""`pg_advisory_xact_lock` key of partition changes ("edmgpart"): one worker at a time."""


def ensure_signal_partitions(store: Session, first: date, days: int) -> int:
    """PostgreSQL: a partition of `signals` for each of `days` days from `first`; rows of
    such a day already in the default partition move into it (same transaction). Returns
    how many were created. Each runs under an advisory lock and checks again inside it, so
    two workers at it together create each partition once (the retention loop runs on the
    lease holder only; this covers a lease that changed hands mid-run)."""
    have = signal_partitions(store)
    created = 0
    for n in range(days):
        day = first + timedelta(days=n)
        if day in have:
            continue
        name = partition_name(day)  # fixed shape: signals_pYYYYMMDD
        bounds = [day.isoformat()]
        try:
            with store.transaction():
                conn = store.conn
                conn.execute("SELECT pg_advisory_xact_lock(?)", [PARTITION_LOCK_KEY])
                if conn.execute("SELECT to_regclass(?)", [name]).fetchone()[0] is not None:
                    continue  # another worker made it while this one waited
                conn.execute(f"CREATE TABLE {name} (LIKE signals INCLUDING DEFAULTS)")
                conn.execute(
                    f"INSERT INTO {name} SELECT * FROM signals_default"  # noqa: S608 - fixed shape
                    " WHERE received_day = CAST(? AS date)",
                    bounds,
                )
                conn.execute(
                    "DELETE FROM signals_default WHERE received_day = CAST(? AS date)", bounds
                )
                conn.execute(
                    f"ALTER TABLE signals ATTACH PARTITION {name} FOR VALUES"
                    f" FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')"
                )
        except Error as exc:
            raise StoreError(f"cannot create the signals partition of {day}: {exc}") from exc
        created += 1
    return created


def drop_signal_partitions(store: Session, cutoff: date) -> int:
    """PostgreSQL: drop each daily partition of `signals` before `cutoff`, one statement
    each; returns how many were dropped."""
    dropped = 0
    for day, name in sorted(signal_partitions(store).items()):
        if day >= cutoff:
            break
        try:
            with store.transaction():
                store.conn.execute(f"DROP TABLE {name}")
        except Error as exc:
            raise StoreError(f"cannot drop the signals partition {name}: {exc}") from exc
        dropped += 1
    return dropped
