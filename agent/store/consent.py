"""The consent table: the user's decision per purpose, versioned; a withdrawal of analytics
purges, in the same transaction, everything the gateway has not acknowledged."""

from __future__ import annotations

from collections.abc import Callable

from agent.store import outbox_sql
from agent.store.rows import ConsentRow, Counters
from agent.store.thread import StoreThread


class ConsentRows:
    """Consent decisions; keeps `counters.analytics_withdrawn` as it commits."""

    def __init__(self, thread: StoreThread, counters: Counters, clock: Callable[[], float]) -> None:
        self._thread = thread
        self._counters = counters
        self._clock = clock

    def load(self) -> list[ConsentRow]:
        rows = self._thread.conn().execute(
            "SELECT purpose, granted, version, updated_at FROM consent"
        )
        return [ConsentRow(str(p), bool(g), int(v), str(u)) for p, g, v, u in rows]

    def set(self, purposes: dict[str, bool], updated_at: str, purge: bool = False) -> int:
        """Store every purpose with the next consent version; returns that version.

        `purge` (analytics withdrawn): in the same transaction, everything the gateway has
        not acknowledged (waiting, or in batches cut but unacked) is deleted and counted as
        withdrawn.
        """
        with self._thread.tx() as tx:
            if purge:
                outbox_sql.purge_pending(tx, self._clock())
                outbox_sql.meta_set(tx, "analytics_withdrawn", "1")
            elif purposes.get("analytics"):
                outbox_sql.meta_set(tx, "analytics_withdrawn", "0")
            (current,) = tx.execute("SELECT COALESCE(MAX(version), 0) FROM consent").fetchone()
            version = int(current) + 1
            tx.executemany(
                "INSERT OR REPLACE INTO consent(purpose, granted, version, updated_at)"
                " VALUES (?, ?, ?, ?)",
                [(p, int(g), version, updated_at) for p, g in purposes.items()],
            )
        c = self._counters
        if purge:
            c.recount(self._thread.conn())
        c.analytics_withdrawn = purge or (c.analytics_withdrawn and not purposes.get("analytics"))
        return version
