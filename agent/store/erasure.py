"""Erasure: one transaction that forgets what the device learned about its users."""

from __future__ import annotations

from collections.abc import Callable

from agent.store import outbox_sql
from agent.store.rows import Counters
from agent.store.thread import StoreThread

FORGOTTEN_TABLES = (
    "signals",
    "outcomes",
    "batches",
    "aggregates",
    "feature_buckets",
    "exposures",
    "cap_counts",
    "claims",
    "social_requests",
    "social_states",
)
"""Usage data and what was derived from it: outbox, batches in flight, aggregates, feature
windows, decisions and outcomes (exposures for attribution, daily cap counts), claims, group
buys and price cuts."""
# Kept: keys and trust, consent, received offers, replay ids, receipts, seq and drop counters.


class Erasure:
    """`forget`: empties the usage tables, then reads the counters back."""

    def __init__(self, thread: StoreThread, counters: Counters, clock: Callable[[], float]) -> None:
        self._thread = thread
        self._counters = counters
        self._clock = clock

    def forget(self, command_id: str) -> dict[str, int]:
        """Erase the device's usage data and record the command as seen, with its receipt,
        in ONE transaction; returns the rows deleted per table. Counted as `forgotten`."""
        with self._thread.tx() as tx:
            (s_count,) = tx.execute("SELECT COUNT(*) FROM signals").fetchone()
            (o_count,) = tx.execute("SELECT COUNT(*) FROM outcomes").fetchone()
            unacked = outbox_sql.aggregate_unacked(tx)
            removed = {
                table: max(tx.execute(f"DELETE FROM {table}").rowcount, 0)  # noqa: S608 - fixed names
                for table in FORGOTTEN_TABLES
            }
            # receipts cut into a deleted batch go again in the next one
            tx.execute("UPDATE receipts SET batch_seq = NULL")
            tx.execute(
                "INSERT OR REPLACE INTO seen_ids(id, seen) VALUES (?, ?)",
                (command_id, self._clock()),
            )
            tx.execute("INSERT OR IGNORE INTO receipts(id) VALUES (?)", (command_id,))
            tx.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('dropped_forgotten', '0')")
            outbox_sql.meta_add(tx, "dropped_forgotten", int(s_count) + int(o_count) + unacked)
            tx.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('forgets', '0')")
            outbox_sql.meta_add(tx, "forgets", 1)
        self._counters.recount(self._thread.conn())
        return removed
