"""The store's batch lifecycle: cut the next batch (persisted seq, drain order, size bounds),
list what waits for an ack, mark sends against the byte budget, delete on ack.

Mixed into `agent.store.core.Store`, whose dedicated thread, transactions and counters it uses.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from agent.errors import BatchTooLarge, StoreError
from agent.store import outbox

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredBatch:
    seq: int
    payload: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class AckResult:
    seqs: tuple[int, ...]
    signals: int
    outcomes: int
    aggregated: int = 0


BatchBuilder = Callable[
    [int, list[dict[str, Any]], list[dict[str, Any]], list[str], list[dict[str, Any]]], bytes
]
"""build(seq, signals, outcomes, receipts, aggregates) -> payload bytes."""
MAX_AGGREGATES_PER_BATCH = 2000
MAX_BATCH_JSON_BYTES = 1024 * 1024
"""Signals read for one batch stop at this much JSON (half the gateway's decompressed
bound); the builder's own check (`agent.link.uplink`) is exact, this only saves work."""


def _within_bytes(rows: Iterable[tuple[str, str, str, str]], limit: int) -> list[dict[str, Any]]:
    """Signal rows as batch items while their estimated JSON stays within `limit` (>= 1 row)."""
    out: list[dict[str, Any]] = []
    used = 0
    for sid, kind, at, attrs in rows:
        used += len(sid) + len(kind) + len(at) + len(attrs.encode("utf-8")) + 40
        if out and used > limit:
            break
        out.append({"id": sid, "kind": kind, "at": at, "attrs": json.loads(attrs)})
    return out


class BatchRows:
    """Batches of the outbox; `Store` provides the thread, the connection and the counters."""

    if TYPE_CHECKING:
        clock: Callable[[], float]
        outbox_bytes: int
        signal_rows: int
        outcome_rows: int
        aggregate_unacked: int
        budget_day: str
        budget_bytes: int
        drops: dict[str, int]

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _conn(self) -> sqlite3.Connection: ...

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _issue4_outcome_extras(
            self, tx: sqlite3.Connection, outcomes: list[dict[str, Any]]
        ) -> None: ...

    async def cut_batch(
        self,
        *,
        max_signals: int,
        max_outcomes: int,
        max_receipts: int,
        include_data: bool,
        build: BatchBuilder,
    ) -> StoredBatch | None:
        """Assign the next persisted seq to the oldest unsent rows and store the payload.

        All in one transaction: either the batch exists with its rows, or nothing changed
        and the seq was not consumed. `build(seq, signals, outcomes, receipts)` makes the
        payload bytes; it is pure and runs on the store thread. None when nothing waits.
        """
        return await self._run(
            self._cut_batch, max_signals, max_outcomes, max_receipts, include_data, build
        )

    def _cut_batch(
        self,
        max_signals: int,
        max_outcomes: int,
        max_receipts: int,
        include_data: bool,
        build: BatchBuilder,
    ) -> StoredBatch | None:
        with self._tx() as tx:
            signals: list[dict[str, Any]] = []
            outcomes: list[dict[str, Any]] = []
            if include_data:
                signals = _within_bytes(
                    tx.execute(
                        # the drain order: high priority first, then oldest first
                        "SELECT id, kind, at, attrs FROM signals WHERE batch_seq IS NULL"
                        " ORDER BY priority DESC, rowid LIMIT ?",
                        (max_signals,),
                    ),
                    MAX_BATCH_JSON_BYTES,
                )
                cols = "id, offer_id, campaign_id, variant, kind, at, surface, score, model_version"
                outcomes = [
                    {k: v for k, v in zip(cols.split(", "), r, strict=True) if v is not None}
                    for r in tx.execute(
                        f"SELECT {cols} FROM outcomes WHERE batch_seq IS NULL"  # noqa: S608
                        " ORDER BY rowid LIMIT ?",
                        (max_outcomes,),
                    )
                ]
                self._issue4_outcome_extras(tx, outcomes)
            receipts = [
                r[0]
                for r in tx.execute(
                    "SELECT id FROM receipts WHERE batch_seq IS NULL ORDER BY rowid LIMIT ?",
                    (max_receipts,),
                )
            ]
            (seq_text,) = tx.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            seq = int(seq_text)
            aggregates = (
                outbox.select_aggregates(tx, MAX_AGGREGATES_PER_BATCH) if include_data else []
            )
            if not signals and not outcomes and not receipts and not aggregates:
                return None
            while True:
                try:
                    payload = build(seq, signals, outcomes, receipts, aggregates)
                    break
                except BatchTooLarge as exc:
                    # Too big for the gateway's bounds: halve what there is, keep the order.
                    parts = (signals, outcomes, receipts, aggregates)
                    if all(len(p) <= 1 for p in parts):
                        raise StoreError(f"one item is too large to send: {exc}") from exc
                    signals, outcomes, receipts, aggregates = (
                        p[: max(1, len(p) // 2)] for p in parts
                    )
            outbox.mark_aggregates_cut(tx, seq, aggregates)
            tx.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(seq + 1),))
            tx.executemany(
                "UPDATE signals SET batch_seq = ? WHERE id = ?", [(seq, s["id"]) for s in signals]
            )
            tx.executemany(
                "UPDATE outcomes SET batch_seq = ? WHERE id = ?",
                [(seq, o["id"]) for o in outcomes],
            )
            tx.executemany(
                "UPDATE receipts SET batch_seq = ? WHERE id = ?", [(seq, r) for r in receipts]
            )
            tx.execute(
                "INSERT INTO batches(seq, payload, created, attempts) VALUES (?, ?, ?, 0)",
                (seq, payload, time.time()),
            )
        self.outbox_bytes += len(payload)
        return StoredBatch(seq, payload, 0)

    async def batches(self) -> list[StoredBatch]:
        """Every stored, unacknowledged batch, by seq."""
        return await self._run(self._batches)

    def _batches(self) -> list[StoredBatch]:
        rows = self._conn().execute("SELECT seq, payload, attempts FROM batches ORDER BY seq")
        return [StoredBatch(int(s), bytes(p), int(a)) for s, p, a in rows]

    async def mark_sent(self, seq: int, nbytes: int = 0, day: str = "") -> None:
        """Batch `seq` was published; `nbytes` count against the byte budget of `day`."""
        await self._run(self._mark_sent, seq, nbytes, day)

    def _mark_sent(self, seq: int, nbytes: int, day: str) -> None:
        with self._tx() as tx:
            tx.execute(
                "UPDATE batches SET attempts = attempts + 1, sent_at = ? WHERE seq = ?",
                (time.time(), seq),
            )
            if day:
                used = outbox.add_budget(tx, day, nbytes)
        if day:
            self.budget_day, self.budget_bytes = day, used

    async def ack(self, seqs: Sequence[int]) -> AckResult:
        """Delete acknowledged batches and their rows; unknown seqs are ignored."""
        return await self._run(self._ack, list(seqs))

    def _ack(self, seqs: list[int]) -> AckResult:
        done: list[int] = []
        n_sig = n_out = n_agg = 0
        restored_sig = restored_out = 0
        freed = 0
        now = self.clock()
        with self._tx() as tx:
            for seq in seqs:
                found = tx.execute("SELECT length(payload) FROM batches WHERE seq = ?", (seq,))
                row = found.fetchone()
                if row is None:
                    late = outbox.ack_withdrawn(tx, seq)
                    if late is not None:  # purged at a withdrawal, but it was stored
                        done.append(seq)
                        n_sig, n_out = n_sig + late[0], n_out + late[1]
                        restored_sig, restored_out = restored_sig + late[0], restored_out + late[1]
                    continue
                confirmed, agg_freed = outbox.ack_aggregates(tx, seq, now)
                n_agg += confirmed
                freed += int(row[0]) + agg_freed
                s_count, s_size = tx.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM signals WHERE batch_seq = ?",
                    (seq,),
                ).fetchone()
                o_count, o_size = tx.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outcomes WHERE batch_seq = ?",
                    (seq,),
                ).fetchone()
                for table in ("signals", "outcomes", "receipts"):
                    tx.execute(f"DELETE FROM {table} WHERE batch_seq = ?", (seq,))  # noqa: S608
                tx.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                done.append(seq)
                n_sig += int(s_count)
                n_out += int(o_count)
                freed += int(s_size) + int(o_size)
        self.signal_rows -= n_sig - restored_sig
        self.outcome_rows -= n_out - restored_out
        self.outbox_bytes -= freed
        if restored_sig or restored_out:
            self.drops["withdrawn"] = self.drops.get("withdrawn", 0) - restored_sig
            self.drops["outcomes_withdrawn"] = (
                self.drops.get("outcomes_withdrawn", 0) - restored_out
            )
        self.aggregate_unacked -= n_agg
        return AckResult(tuple(done), n_sig, n_out, n_agg)

    async def next_seq(self) -> int:
        return await self._run(self._next_seq)

    def _next_seq(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        return int(row[0])
