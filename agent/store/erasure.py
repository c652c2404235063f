"""The store's erasure: one transaction that forgets what the device learned about its users.

Mixed into `agent.store.core.Store`, whose dedicated thread and transactions it uses.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from agent.store import outbox

T = TypeVar("T")

FORGOTTEN_TABLES = (
    "signals",
    "outcomes",
    "batches",
    "aggregates",
    "feature_buckets",
    "issue4_exposures",
    "issue4_cap_counts",
    "issue4_claims",
)
"""Usage data and what was derived from it: outbox, batches in flight, aggregates, feature
windows, decisions and outcomes (exposures for attribution, daily cap counts), claims."""
KEPT = "keys and trust, consent, received offers, replay ids, receipts, seq and drop counters"


class ErasureRows:
    """`forget`: empties the usage tables; `Store` provides the thread and connection."""

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _conn(self) -> sqlite3.Connection: ...

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _recount(self) -> None: ...

    async def forget(self, command_id: str) -> dict[str, int]:
        """Erase the device's usage data and record the command as seen, with its receipt,
        in ONE transaction; returns the rows deleted per table. Counted as `forgotten`."""
        return await self._run(self._forget, command_id)

    def _forget(self, command_id: str) -> dict[str, int]:
        with self._tx() as tx:
            (s_count,) = tx.execute("SELECT COUNT(*) FROM signals").fetchone()
            (o_count,) = tx.execute("SELECT COUNT(*) FROM outcomes").fetchone()
            unacked = outbox.aggregate_unacked(tx)
            removed = {
                table: max(tx.execute(f"DELETE FROM {table}").rowcount, 0)  # noqa: S608 - fixed names
                for table in FORGOTTEN_TABLES
            }
            # receipts cut into a deleted batch go again in the next one
            tx.execute("UPDATE receipts SET batch_seq = NULL")
            tx.execute(
                "INSERT OR REPLACE INTO seen_ids(id, seen) VALUES (?, ?)", (command_id, time.time())
            )
            tx.execute("INSERT OR IGNORE INTO receipts(id) VALUES (?)", (command_id,))
            tx.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('dropped_forgotten', '0')")
            outbox.meta_add(tx, "dropped_forgotten", int(s_count) + int(o_count) + unacked)
            tx.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('forgets', '0')")
            outbox.meta_add(tx, "forgets", 1)
        self._recount()
        return removed
