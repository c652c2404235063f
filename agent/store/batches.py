"""The batches table: cut the next batch (persisted seq, drain order, size bounds), list
what waits for an ack, mark sends against the byte budget, delete on ack. Synchronous; runs on
the store thread (`agent.store.thread`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import BatchTooLarge, StoreError
from agent.store import outbox_sql
from agent.store.decisions import add_outcome_extras
from agent.store.rows import Counters
from agent.store.thread import StoreThread


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


class Batches:
    """Batches of the outbox; keeps `counters` (bytes, rows, budget) as it commits."""

    def __init__(self, thread: StoreThread, counters: Counters, clock: Callable[[], float]) -> None:
        self._thread = thread
        self._counters = counters
        self._clock = clock

    def cut(
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
        with self._thread.tx() as tx:
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
                add_outcome_extras(tx, outcomes)
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
                outbox_sql.select_aggregates(tx, MAX_AGGREGATES_PER_BATCH) if include_data else []
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
            outbox_sql.mark_aggregates_cut(tx, seq, aggregates)
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
                (seq, payload, self._clock()),
            )
        self._counters.outbox_bytes += len(payload)
        return StoredBatch(seq, payload, 0)

    def stored(self) -> list[StoredBatch]:
        """Every stored, unacknowledged batch, by seq."""
        rows = self._thread.conn().execute(
            "SELECT seq, payload, attempts FROM batches ORDER BY seq"
        )
        return [StoredBatch(int(s), bytes(p), int(a)) for s, p, a in rows]

    def mark_sent(self, seq: int, nbytes: int = 0, day: str = "") -> None:
        """Batch `seq` was published; `nbytes` count against the byte budget of `day`."""
        with self._thread.tx() as tx:
            tx.execute(
                "UPDATE batches SET attempts = attempts + 1, sent_at = ? WHERE seq = ?",
                (self._clock(), seq),
            )
            if day:
                used = outbox_sql.add_budget(tx, day, nbytes)
        if day:
            self._counters.budget_day, self._counters.budget_bytes = day, used

    def ack(self, seqs: Sequence[int]) -> AckResult:
        """Delete acknowledged batches and their rows; unknown seqs are ignored."""
        done: list[int] = []
        n_sig = n_out = n_agg = 0
        restored_sig = restored_out = 0
        freed = 0
        now = self._clock()
        with self._thread.tx() as tx:
            for seq in seqs:
                found = tx.execute("SELECT length(payload) FROM batches WHERE seq = ?", (seq,))
                row = found.fetchone()
                if row is None:
                    late = outbox_sql.ack_withdrawn(tx, seq)
                    if late is not None:  # purged at a withdrawal, but it was stored
                        done.append(seq)
                        n_sig, n_out = n_sig + late[0], n_out + late[1]
                        restored_sig, restored_out = restored_sig + late[0], restored_out + late[1]
                    continue
                confirmed, agg_freed = outbox_sql.ack_aggregates(tx, seq, now)
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
        c = self._counters
        c.signal_rows -= n_sig - restored_sig
        c.outcome_rows -= n_out - restored_out
        c.outbox_bytes -= freed
        if restored_sig or restored_out:
            c.drop("withdrawn", -restored_sig)
            c.drop("outcomes_withdrawn", -restored_out)
        c.aggregate_unacked -= n_agg
        return AckResult(tuple(done), n_sig, n_out, n_agg)

    def next_seq(self) -> int:
        row = (
            self._thread.conn().execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        )
        return int(row[0])
