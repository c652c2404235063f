"""The batches table: cut the next batch (persisted seq, drain order, size bounds), list
what waits for an ack, mark sends against the byte budget, delete on ack. Synchronous; runs on
the store thread (`agent.store.thread`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.errors import BatchTooLarge
from agent.store import outbox_sql, quarantine
from agent.store.decisions import add_outcome_extras
from agent.store.quarantine import Poisoned
from agent.store.rows import Counters
from agent.store.thread import StoreThread
from protocol import codec
from protocol.codec import loads_finite
from protocol.errors import ProtocolError


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


@dataclass(frozen=True, slots=True)
class Refused:
    """One batch the gateway refused for good, and the field it named (if any)."""

    seq: int
    reason: str
    field: str | None = None


def _named_item(payload: bytes, field: str | None) -> tuple[str, str] | None:
    """The (table, id) of the batch item `field` points into (`signals.3.attrs.price`), read
    from the batch as it was sent; aggregates as ("aggregates", "window\\x00key")."""
    if not field:
        return None
    part, _, rest = field.partition(".")
    index = rest.partition(".")[0]
    if part not in ("signals", "outcomes", "aggregates") or not index.isdigit():
        return None
    try:
        items = codec.decode_object(payload, allow_zlib=True).get(part)
    except ProtocolError:
        return None
    if not isinstance(items, list) or int(index) >= len(items):
        return None
    item = items[int(index)]
    if not isinstance(item, dict):
        return None
    if part == "aggregates":
        return part, f"{item.get('window')}\x00{item.get('key')}"
    return (part, str(item["id"])) if "id" in item else None


BatchBuilder = Callable[
    [int, list[dict[str, Any]], list[dict[str, Any]], list[str], list[dict[str, Any]]], bytes
]
"""build(seq, signals, outcomes, receipts, aggregates) -> payload bytes."""
MAX_AGGREGATES_PER_BATCH = 2000
MAX_BATCH_JSON_BYTES = 1024 * 1024
"""Signals read for one batch stop at this much JSON (half the gateway's decompressed
bound); the builder's own check (`agent.link.uplink`) is exact, this only saves work."""


def _within_bytes(
    rows: Iterable[tuple[str, str, str, str]], limit: int, poisoned: list[Poisoned]
) -> list[dict[str, Any]]:
    """Signal rows as batch items while their estimated JSON stays within `limit` (>= 1 row);
    a row whose attrs are not a finite JSON object goes to `poisoned` instead."""
    out: list[dict[str, Any]] = []
    used = 0
    for sid, kind, at, attrs in rows:
        used += len(sid) + len(kind) + len(at) + len(attrs.encode("utf-8")) + 40
        if out and used > limit:
            break
        try:
            parsed = loads_finite(attrs)
        except (ValueError, ProtocolError, RecursionError) as exc:
            poisoned.append(Poisoned("signals", sid, f"attrs: {exc}"))
            continue
        if not isinstance(parsed, dict):
            poisoned.append(Poisoned("signals", sid, "attrs: not a JSON object"))
            continue
        out.append({"id": sid, "kind": kind, "at": at, "attrs": parsed})
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
        poisoned: list[Poisoned] = []
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
                    poisoned,
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
                add_outcome_extras(tx, outcomes, poisoned)
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
            payload = None
            while signals or outcomes or receipts or aggregates:
                try:
                    payload = build(seq, signals, outcomes, receipts, aggregates)
                    break
                except BatchTooLarge as exc:
                    # Too big for the gateway's bounds: halve what there is, keep the order.
                    parts = (signals, outcomes, receipts, aggregates)
                    if all(len(p) <= 1 for p in parts):
                        # one item alone is too large: it can never be sent
                        big = [Poisoned("signals", s["id"], str(exc)) for s in signals]
                        big += [Poisoned("outcomes", o["id"], str(exc)) for o in outcomes]
                        if not big:
                            raise
                        poisoned += big
                        signals, outcomes = [], []
                        continue
                    signals, outcomes, receipts, aggregates = (
                        p[: max(1, len(p) // 2)] for p in parts
                    )
                except Exception as exc:
                    # An item the envelope refuses (an older version wrote it), or any other
                    # failure that items alone explain: those items go out of the way.
                    parts_of = {"signals": signals, "outcomes": outcomes}
                    bad = (
                        quarantine.bad_items(exc, parts_of)
                        if isinstance(exc, ValidationError)
                        else []
                    ) or quarantine.alone(lambda s, o: build(seq, s, o, [], []), signals, outcomes)
                    if not bad:
                        raise
                    poisoned += bad
                    gone = {p.id for p in bad}
                    signals = [s for s in signals if s["id"] not in gone]
                    outcomes = [o for o in outcomes if o["id"] not in gone]
            if poisoned:
                quarantine.move(tx, poisoned, self._clock())
            if payload is None:
                self._after_quarantine(poisoned)
                return None
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
                "INSERT INTO batches(seq, payload, created, attempts, outbox_id)"
                " VALUES (?, ?, ?, 0, ?)",
                (seq, payload, self._clock(), self._counters.outbox_id or None),
            )
        self._counters.outbox_bytes += len(payload)
        self._after_quarantine(poisoned)
        return StoredBatch(seq, payload, 0)

    def _after_quarantine(self, poisoned: list[Poisoned]) -> None:
        if poisoned:  # rare: the counters are simplest read back
            self._counters.recount(self._thread.conn())

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

    def ack(self, seqs: Sequence[int], outbox_id: str | None = None) -> AckResult:
        """Delete acknowledged batches and their rows; unknown seqs are ignored. With
        `outbox_id` (what the gateway echoes), only batches cut under that outbox id: an ack
        meant for another copy of this store deletes nothing here."""
        done: list[int] = []
        n_sig = n_out = n_agg = 0
        restored_sig = restored_out = 0
        freed = 0
        now = self._clock()
        with self._thread.tx() as tx:
            for seq in seqs:
                found = tx.execute(
                    "SELECT length(payload) FROM batches WHERE seq = ?"
                    " AND (? IS NULL OR outbox_id IS NULL OR outbox_id = ?)",
                    (seq, outbox_id, outbox_id),
                )
                row = found.fetchone()
                if row is None:
                    if outbox_id is not None and outbox_id != self._counters.outbox_id:
                        continue  # another outbox's seq: nothing of ours
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

    def refuse(self, refusals: Sequence[Refused], outbox_id: str | None = None) -> tuple[int, ...]:
        """Batches the gateway refused for good (`Ack.refused`): resending cannot change the
        answer. The item a refusal names (`signals.3.attrs.price`) is quarantined (an
        aggregate so named is dropped, counted); with none named, every signal and outcome of
        the batch is. The rest of the batch goes back to the outbox and is cut again. Only
        batches cut under `outbox_id` (as for acks). Returns the seqs taken back."""
        done: list[int] = []
        now = self._clock()
        with self._thread.tx() as tx:
            for refused in refusals:
                row = tx.execute(
                    "SELECT payload FROM batches WHERE seq = ?"
                    " AND (? IS NULL OR outbox_id IS NULL OR outbox_id = ?)",
                    (refused.seq, outbox_id, outbox_id),
                ).fetchone()
                if row is None:
                    continue
                seq, why = refused.seq, f"refused by the gateway: {refused.reason}"
                named = _named_item(bytes(row[0]), refused.field)
                if named is not None and named[0] == "aggregates":
                    window, key = named[1].split("\x00", 1)
                    tx.execute("DELETE FROM aggregates WHERE window = ? AND key = ?", (window, key))
                    outbox_sql.meta_add(tx, "aggregates_refused", 1)
                    poisoned = []
                elif named is not None:
                    poisoned = [Poisoned(named[0], named[1], f"{why} at {refused.field}")]
                else:
                    poisoned = [
                        Poisoned(table, str(item_id), why)
                        for table in ("signals", "outcomes")
                        for (item_id,) in tx.execute(
                            f"SELECT id FROM {table} WHERE batch_seq = ?",  # noqa: S608
                            (seq,),
                        )
                    ]
                quarantine.move(tx, poisoned, now)
                for table in ("signals", "outcomes", "receipts"):
                    tx.execute(
                        f"UPDATE {table} SET batch_seq = NULL WHERE batch_seq = ?",  # noqa: S608
                        (seq,),
                    )
                tx.execute(
                    "UPDATE aggregates SET batch_seq = NULL, dirty_since = ? WHERE batch_seq = ?",
                    (now, seq),
                )
                tx.execute("DELETE FROM batches WHERE seq = ?", (seq,))
                outbox_sql.meta_add(tx, "batches_refused", 1)
                done.append(seq)
        if done:
            self._counters.recount(self._thread.conn())
        return tuple(done)

    def next_seq(self) -> int:
        row = (
            self._thread.conn().execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        )
        return int(row[0])
