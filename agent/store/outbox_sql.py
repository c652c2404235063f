"""Outbox SQL beyond the basics: quota eviction, aggregates, consent purge, drop counters.

Plain functions over an open `sqlite3.Connection` inside a transaction the caller holds;
`agent.store.outbox.Outbox` and its neighbours run them on the store thread. Nothing here
loads the whole outbox: eviction walks a cursor and stops as soon as enough bytes are free.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from agent.intake.aggregates import (
    AGGREGATE_ROW_CHARGE,
    AggregateHit,
    hit_from_row,
    merge_hits,
    window_end,
)


@dataclass(frozen=True, slots=True)
class Freed:
    """Rows dropped on purpose by one operation, by reason, and the bytes they held."""

    evicted: int = 0
    expired: int = 0
    withdrawn: int = 0
    bytes: int = 0


def meta_int(db: sqlite3.Connection, key: str) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row and row[0] else 0


def meta_add(db: sqlite3.Connection, key: str, amount: int) -> None:
    if amount:
        db.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) WHERE key = ?",
            (amount, key),
        )


def meta_set(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))


def drop_counts(db: sqlite3.Connection) -> dict[str, int]:
    """Persisted totals of signals dropped on purpose (they survive crashes and restarts)."""
    return {
        "evicted": meta_int(db, "dropped_evicted"),
        "expired": meta_int(db, "dropped_expired"),
        "withdrawn": meta_int(db, "dropped_withdrawn"),
        "refused": meta_int(db, "signals_refused"),
        "outcomes_withdrawn": meta_int(db, "outcomes_withdrawn"),
        "forgotten": meta_int(db, "dropped_forgotten"),
        "forgets": meta_int(db, "forgets"),
        "quarantined": meta_int(db, "quarantined"),
        "batches_refused": meta_int(db, "batches_refused"),
        "aggregates_refused": meta_int(db, "aggregates_refused"),
        "outbox_rotations": meta_int(db, "outbox_rotations"),
    }


def expire(db: sqlite3.Connection, now: float) -> Freed:
    """Delete unsent signals past their time to live."""
    count, size = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM signals"
        " WHERE batch_seq IS NULL AND expires_at < ?",
        (now,),
    ).fetchone()
    if count:
        db.execute("DELETE FROM signals WHERE batch_seq IS NULL AND expires_at < ?", (now,))
        meta_add(db, "dropped_expired", int(count))
    return Freed(expired=int(count), bytes=int(size))


def evict(db: sqlite3.Connection, need: int) -> Freed:
    """Free at least `need` bytes of unsent signals: lowest priority first, then oldest.

    Walks a cursor over the `(priority, created)` index and stops once enough is free, so
    memory holds only the victims' ids. Returns what it freed (maybe less than `need`).
    """
    victims: list[tuple[str]] = []
    freed = 0
    for row_id, size in db.execute(
        "SELECT id, size FROM signals WHERE batch_seq IS NULL ORDER BY priority, created, rowid"
    ):
        if freed >= need:
            break
        victims.append((row_id,))
        freed += int(size)
    if victims:
        db.executemany("DELETE FROM signals WHERE id = ?", victims)
        meta_add(db, "dropped_evicted", len(victims))
    return Freed(evicted=len(victims), bytes=freed)


def add_hits(db: sqlite3.Connection, hits: list[AggregateHit], now: float) -> int:
    """Count signals into their aggregate rows; returns the quota bytes of new rows."""
    new_rows = 0
    for (window, key), (count, secs) in merge_hits(hits).items():
        cur = db.execute(
            "UPDATE aggregates SET count = count + ?, seconds = seconds + ?,"
            " dirty_since = COALESCE(dirty_since, ?) WHERE window = ? AND key = ?",
            (count, secs, now, window, key),
        )
        if cur.rowcount == 0:
            db.execute(
                "INSERT INTO aggregates(window, key, count, seconds, dirty_since)"
                " VALUES (?, ?, ?, ?, ?)",
                (window, key, count, secs, now),
            )
            new_rows += 1
    return new_rows * AGGREGATE_ROW_CHARGE


def fold_pending(db: sqlite3.Connection, now: float, window_s: int, limit: int) -> tuple[int, int]:
    """Turn up to `limit` unsent raw signals into aggregates (degrading under the byte
    budget); returns (signals folded, quota bytes freed net)."""
    rows = db.execute(
        "SELECT id, kind, attrs, size FROM signals WHERE batch_seq IS NULL ORDER BY rowid LIMIT ?",
        (limit,),
    ).fetchall()
    if not rows:
        return 0, 0
    hits = [hit_from_row(kind, attrs, now, window_s) for _, kind, attrs, _ in rows]
    added = add_hits(db, hits, now)
    db.executemany("DELETE FROM signals WHERE id = ?", [(r[0],) for r in rows])
    return len(rows), sum(int(r[3]) for r in rows) - added


def aggregate_pending(db: sqlite3.Connection) -> tuple[int, float | None]:
    """(rows with changes not yet cut into a batch, the oldest such change)."""
    count, oldest = db.execute(
        "SELECT COUNT(*), MIN(dirty_since) FROM aggregates WHERE dirty_since IS NOT NULL"
    ).fetchone()
    return int(count), oldest


def aggregate_unacked(db: sqlite3.Connection) -> int:
    """Signals counted in aggregates that the gateway has not confirmed yet."""
    (n,) = db.execute("SELECT COALESCE(SUM(count - acked_count), 0) FROM aggregates").fetchone()
    return int(n)


def select_aggregates(db: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` changed rows as cumulative snapshots, oldest change first."""
    rows = db.execute(
        "SELECT window, key, count, seconds FROM aggregates WHERE dirty_since IS NOT NULL"
        " ORDER BY dirty_since LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        {"window": w, "key": k, "count": int(c), "seconds": round(float(s), 3)}
        for w, k, c, s in rows
    ]


def mark_aggregates_cut(db: sqlite3.Connection, seq: int, snapshots: list[dict[str, Any]]) -> None:
    """The snapshots (from `select_aggregates`, same transaction) went into batch `seq`."""
    db.executemany(
        "UPDATE aggregates SET sent_count = ?, sent_seconds = ?, batch_seq = ?,"
        " dirty_since = NULL WHERE window = ? AND key = ?",
        [(a["count"], a["seconds"], seq, a["window"], a["key"]) for a in snapshots],
    )


def ack_aggregates(db: sqlite3.Connection, seq: int, now: float) -> tuple[int, int]:
    """Batch `seq` is stored: its snapshots are confirmed. Rows of closed windows with
    nothing left to send are deleted. Returns (signals newly confirmed, bytes freed)."""
    (confirmed,) = db.execute(
        "SELECT COALESCE(SUM(MAX(sent_count - acked_count, 0)), 0) FROM aggregates"
        " WHERE batch_seq = ?",
        (seq,),
    ).fetchone()
    db.execute(
        "UPDATE aggregates SET acked_count = MAX(acked_count, sent_count) WHERE batch_seq = ?",
        (seq,),
    )
    freed = 0
    for window, key in db.execute(
        "SELECT window, key FROM aggregates WHERE batch_seq = ? AND dirty_since IS NULL"
        " AND acked_count = count",
        (seq,),
    ).fetchall():
        if _window_closed(window, now):
            db.execute("DELETE FROM aggregates WHERE window = ? AND key = ?", (window, key))
            freed += AGGREGATE_ROW_CHARGE
    return int(confirmed), freed


def _window_closed(window: str, now: float) -> bool:
    try:
        return window_end(window) <= now
    except ValueError:
        return True


def purge_pending(db: sqlite3.Connection, now: float) -> tuple[Freed, int]:
    """Consent for analytics withdrawn: drop everything that has not reached the gateway.

    Raw signals and outcomes are deleted, waiting ones and those in batches already cut but
    not acknowledged alike; those batches are deleted (never sent again) and their receipts
    go back to the queue. Aggregate rows go back to what the gateway confirmed. Every signal
    is counted as withdrawn. A purged batch that was published may have been stored after
    all: it is remembered in `withdrawn_batches` and `ack_withdrawn` undoes its count when
    its ack comes. Returns (signals withdrawn with the bytes freed, outcomes withdrawn).
    """
    sent = db.execute(
        "SELECT b.seq, (SELECT COUNT(*) FROM signals s WHERE s.batch_seq = b.seq),"
        " (SELECT COUNT(*) FROM outcomes o WHERE o.batch_seq = b.seq) FROM batches b"
        " WHERE b.attempts > 0"
    ).fetchall()
    db.executemany(
        "INSERT OR REPLACE INTO withdrawn_batches(seq, signals, outcomes, created)"
        " VALUES (?, ?, ?, ?)",
        [(seq, n_sig, n_out, now) for seq, n_sig, n_out in sent],
    )
    db.execute(  # bounded: only the newest tombstones can still meet their ack
        "DELETE FROM withdrawn_batches WHERE seq NOT IN"
        " (SELECT seq FROM withdrawn_batches ORDER BY seq DESC LIMIT 256)"
    )
    s_count, s_size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM signals").fetchone()
    o_count, o_size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outcomes").fetchone()
    (b_size,) = db.execute("SELECT COALESCE(SUM(length(payload)), 0) FROM batches").fetchone()
    db.execute("DELETE FROM signals")
    db.execute("DELETE FROM outcomes")
    db.execute("DELETE FROM batches")
    db.execute("UPDATE receipts SET batch_seq = NULL")
    (a_count,) = db.execute(
        "SELECT COALESCE(SUM(count - acked_count), 0) FROM aggregates"
    ).fetchone()
    (a_rows,) = db.execute("SELECT COUNT(*) FROM aggregates WHERE acked_count = 0").fetchone()
    db.execute("DELETE FROM aggregates WHERE acked_count = 0")
    db.execute(
        "UPDATE aggregates SET count = acked_count, sent_count = acked_count,"
        " seconds = sent_seconds, dirty_since = NULL, batch_seq = NULL"
    )
    withdrawn = int(s_count) + int(a_count)
    meta_add(db, "dropped_withdrawn", withdrawn)
    meta_add(db, "outcomes_withdrawn", int(o_count))
    freed = int(s_size) + int(o_size) + int(b_size) + int(a_rows) * AGGREGATE_ROW_CHARGE
    return Freed(withdrawn=withdrawn, bytes=freed), int(o_count)


def ack_withdrawn(db: sqlite3.Connection, seq: int) -> tuple[int, int] | None:
    """An ack for a batch purged at a withdrawal: the gateway had stored it, so its signals
    and outcomes are stored, not withdrawn. Returns (signals, outcomes), None if unknown."""
    row = db.execute(
        "SELECT signals, outcomes FROM withdrawn_batches WHERE seq = ?", (seq,)
    ).fetchone()
    if row is None:
        return None
    db.execute("DELETE FROM withdrawn_batches WHERE seq = ?", (seq,))
    meta_add(db, "dropped_withdrawn", -int(row[0]))
    meta_add(db, "outcomes_withdrawn", -int(row[1]))
    return int(row[0]), int(row[1])


def evict_aggregates(db: sqlite3.Connection, need: int, now: float) -> Freed:
    """Free at least `need` bytes of aggregate rows, oldest window first: rows of closed
    windows, and rows the gateway never saw, that are in no batch in flight. The signals
    they count and the gateway has not confirmed are counted as evicted."""
    victims: list[tuple[str, str]] = []
    evicted = freed = 0
    for window, key, count, acked, sent in db.execute(
        "SELECT window, key, count, acked_count, sent_count FROM aggregates a"
        " WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.seq = a.batch_seq)"
        " ORDER BY window, key"
    ):
        if freed >= need:
            break
        if sent and not _window_closed(window, now):
            continue  # the gateway holds a snapshot: a new row would lower its count
        victims.append((window, key))
        evicted += int(count) - int(acked)
        freed += AGGREGATE_ROW_CHARGE
    if victims:
        db.executemany("DELETE FROM aggregates WHERE window = ? AND key = ?", victims)
        meta_add(db, "dropped_evicted", evicted)
    return Freed(evicted=evicted, bytes=freed)


def new_aggregate_rows(db: sqlite3.Connection, hits: list[AggregateHit]) -> int:
    """How many rows counting `hits` would add (what they cost against the quota)."""
    return sum(
        1
        for window, key in merge_hits(hits)
        if db.execute(
            "SELECT 1 FROM aggregates WHERE window = ? AND key = ?", (window, key)
        ).fetchone()
        is None
    )


def budget(db: sqlite3.Connection) -> tuple[str, int]:
    """(day, bytes published that day) of the uplink's daily byte budget."""
    row = db.execute("SELECT value FROM meta WHERE key = 'budget_day'").fetchone()
    return (str(row[0]) if row else ""), meta_int(db, "budget_bytes")


def add_budget(db: sqlite3.Connection, day: str, nbytes: int) -> int:
    """Add published bytes to `day` (a new day starts from zero); returns the day's total."""
    current_day, used = budget(db)
    if current_day != day:
        used = 0
        meta_set(db, "budget_day", day)
    used += nbytes
    meta_set(db, "budget_bytes", str(used))
    return used


def outbox_bytes(db: sqlite3.Connection) -> int:
    """Bytes the outbox holds against its quota: rows, aggregates and stored batch payloads."""
    (sig,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM signals").fetchone()
    (out,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM outcomes").fetchone()
    (bat,) = db.execute("SELECT COALESCE(SUM(length(payload)), 0) FROM batches").fetchone()
    (agg,) = db.execute("SELECT COUNT(*) FROM aggregates").fetchone()
    return int(sig) + int(out) + int(bat) + int(agg) * AGGREGATE_ROW_CHARGE
