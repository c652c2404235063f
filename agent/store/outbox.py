"""The outbox table: signals stored against the quota (expiry, eviction, aggregates), what
waits for a batch, expiry and folding into aggregates. Synchronous; runs on the store thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from agent.errors import QuotaExceeded, StoreError
from agent.intake.aggregates import AGGREGATE_ROW_CHARGE, AggregateHit
from agent.store import idempotency, outbox_sql
from agent.store.rows import Accepted, Counters, NewSignal, Pending
from agent.store.thread import StoreThread


def _held(db: sqlite3.Connection, ids: Sequence[str]) -> list[str]:
    held: list[str] = []
    for start in range(0, len(ids), 500):  # under SQLite's bound on parameters
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        held += [
            r[0]
            for r in db.execute(f"SELECT id FROM signals WHERE id IN ({marks})", chunk)  # noqa: S608
        ]
    return held


class Outbox:
    """Signals in, pending counts out; keeps `counters` as it commits."""

    def __init__(
        self,
        thread: StoreThread,
        counters: Counters,
        clock: Callable[[], float],
        *,
        outbox_full: str = "evict",
    ) -> None:
        self._thread = thread
        self._counters = counters
        self._clock = clock
        self.outbox_full = outbox_full

    def accept(
        self,
        signals: Sequence[NewSignal],
        buckets: Sequence[tuple[str, int, int]],
        hits: Sequence[AggregateHit] | None = None,
        withdrawn: bool = False,
        client_ids: frozenset[str] = frozenset(),
    ) -> Accepted:
        """Store signals and their feature-bucket increments in ONE transaction.

        `hits` given: the signals are counted into aggregate rows instead of stored raw.
        `withdrawn`: analytics consent was withdrawn, so only the feature buckets are kept
        and the signals are counted as withdrawn (they never leave the device).
        At the quota: expired signals go first, then the lowest priority, then the oldest,
        each counted; QuotaExceeded (nothing stored) when the profile says refuse or when
        eviction cannot free enough.
        """
        self._thread.space.refuse_if_full()  # new data waits while the disk is full
        c = self._counters
        # Decided here, on the store thread, in order with the purge of a withdrawal.
        withdrawn = withdrawn or c.analytics_withdrawn
        raw = not withdrawn and hits is None
        now = self._clock()
        added = 0
        duplicates = 0
        try:
            with self._thread.tx() as tx:
                if raw and client_ids:
                    # a concurrent request stored one of them since `held_ids` looked
                    held = set(_held(tx, [s.id for s in signals if s.id in client_ids]))
                    duplicates = len(held)
                    signals = [s for s in signals if s.id not in held]
                sizes = [s.size for s in signals] if raw else []
                if raw:
                    need = sum(sizes)
                elif withdrawn:
                    need = 0
                else:  # aggregate mode: new rows cost their charge, counting into old ones not
                    need = outbox_sql.new_aggregate_rows(tx, list(hits or [])) * (
                        AGGREGATE_ROW_CHARGE
                    )
                expired, evicted, freed, recount = self._make_room(tx, need, now)
                if raw:
                    tx.executemany(
                        "INSERT INTO signals(id, kind, at, attrs, priority, expires_at, created,"
                        " size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (s.id, s.kind, s.at, s.attrs_json, s.priority, s.expires_at, now, size)
                            for s, size in zip(signals, sizes, strict=True)
                        ],
                    )
                elif withdrawn:
                    outbox_sql.meta_add(tx, "dropped_withdrawn", len(signals))
                else:
                    added = outbox_sql.add_hits(tx, list(hits or []), now)
                idempotency.record(tx, now)
                if buckets:
                    tx.executemany(
                        "INSERT INTO feature_buckets(key, hour, count) VALUES (?, ?, ?)"
                        " ON CONFLICT(key, hour) DO UPDATE SET count = count + excluded.count",
                        buckets,
                    )
        except QuotaExceeded:
            self._count_refused(len(signals))
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store signals: {exc}") from exc
        aggregated = len(signals) if hits is not None and not withdrawn else 0
        if recount:  # aggregate rows were evicted: what they held is simplest read back
            c.recount(self._thread.conn())
        else:
            c.signal_rows += (len(signals) if raw else 0) - evicted - expired
            c.outbox_bytes += (need if raw else added) - freed
            c.drop("evicted", evicted)
            c.drop("expired", expired)
            if withdrawn:
                c.drop("withdrawn", len(signals))
            c.aggregate_unacked += aggregated
        return Accepted(evicted, expired, len(signals) if withdrawn else 0, aggregated, duplicates)

    def held_ids(self, ids: Sequence[str]) -> list[str]:
        """Which of `ids` (client ids of signals) the outbox holds."""
        return _held(self._thread.conn(), ids)

    def _make_room(
        self, tx: sqlite3.Connection, need: int, now: float
    ) -> tuple[int, int, int, bool]:
        """(expired, evicted, bytes freed, aggregate rows evicted) to fit `need` more bytes
        under the quota: expired signals, then raw signals by priority and age, then
        aggregate rows (oldest window first)."""
        c = self._counters
        over = c.outbox_bytes + need - c.outbox_max_bytes
        if over <= 0:
            return 0, 0, 0, False
        gone = outbox_sql.expire(tx, now)
        expired, freed = gone.expired, gone.bytes
        over -= freed
        if over > 0 and self.outbox_full == "refuse":
            raise QuotaExceeded(
                f"outbox at quota: {c.outbox_bytes - freed} of {c.outbox_max_bytes} bytes"
            )
        evicted = 0
        if over > 0:
            gone = outbox_sql.evict(tx, over)
            evicted, freed, over = gone.evicted, freed + gone.bytes, over - gone.bytes
        if over > 0:
            gone = outbox_sql.evict_aggregates(tx, over, now)
            if gone.bytes < over:
                raise QuotaExceeded("outbox at quota and nothing left to evict")
            return expired, evicted + gone.evicted, freed + gone.bytes, True
        return expired, evicted, freed, False

    def _count_refused(self, n: int) -> None:
        try:
            with self._thread.tx() as tx:
                outbox_sql.meta_add(tx, "signals_refused", n)
        except sqlite3.Error:
            return
        self._counters.drop("refused", n)

    def pending(self) -> Pending:
        db = self._thread.conn()
        s_count, s_oldest = db.execute(
            "SELECT COUNT(*), MIN(created) FROM signals WHERE batch_seq IS NULL"
        ).fetchone()
        o_count, o_oldest = db.execute(
            "SELECT COUNT(*), MIN(created) FROM outcomes WHERE batch_seq IS NULL"
        ).fetchone()
        (r_count,) = db.execute("SELECT COUNT(*) FROM receipts WHERE batch_seq IS NULL").fetchone()
        a_count, a_oldest = outbox_sql.aggregate_pending(db)
        olds = [x for x in (s_oldest, o_oldest, a_oldest) if x is not None]
        return Pending(
            int(s_count), int(o_count), int(r_count), min(olds) if olds else None, a_count
        )

    def expire(self, now: float | None = None) -> int:
        """Delete unsent signals past their time to live (at `now`, else the clock's now)."""
        with self._thread.tx() as tx:
            gone = outbox_sql.expire(tx, self._clock() if now is None else now)
        c = self._counters
        c.signal_rows -= gone.expired
        c.outbox_bytes -= gone.bytes
        c.drop("expired", gone.expired)
        return gone.expired

    def fold_pending(self, window_s: int, limit: int = 2000) -> int:
        """Turn up to `limit` unsent raw signals into aggregates; returns how many."""
        with self._thread.tx() as tx:
            folded, _ = outbox_sql.fold_pending(tx, self._clock(), window_s, limit)
        if folded:
            self._counters.recount(self._thread.conn())
        return folded
