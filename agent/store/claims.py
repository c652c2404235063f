"""The claims table: one claim per limited offer (UNIQUE), created before anything is sent,
answered once with its receipt. Synchronous; runs on the store thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from agent.errors import StoreError
from agent.store import idempotency
from agent.store.thread import StoreThread

_COLS = "id, offer_id, campaign_id, state, created, updated, attempts, code, reason"
_NAMES = _COLS.replace(" ", "").split(",")


class ClaimRows:
    """Claims by offer and by id."""

    def __init__(self, thread: StoreThread, clock: Callable[[], float]) -> None:
        self._thread = thread
        self._clock = clock

    def open(self, claim_id: str, offer_id: str, campaign_id: str) -> tuple[dict[str, Any], bool]:
        """The claim of `offer_id`: created as `pending` with `claim_id` if there is none yet
        (True), otherwise the existing one (False). One claim per offer, whatever happens."""
        self._thread.space.refuse_if_full()  # new data waits while the disk is full
        now = self._clock()
        with self._thread.tx() as tx:
            cur = tx.execute(
                "INSERT OR IGNORE INTO claims(id, offer_id, campaign_id, state, created,"
                " updated) VALUES (?, ?, ?, 'pending', ?, ?)",
                (claim_id, offer_id, campaign_id, now, now),
            )
            created = cur.rowcount == 1
            if created:
                idempotency.record(tx, now)
            row = _row(tx, "offer_id", offer_id)
        if row is None:  # pragma: no cover - the row was just written in this transaction
            raise StoreError(f"claim of {offer_id} vanished")
        return row, created

    def get(self, claim_id: str) -> dict[str, Any] | None:
        return _row(self._thread.conn(), "id", claim_id)

    def all(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every claim (or those in `state`), oldest first."""
        sql = f"SELECT {_COLS} FROM claims"  # noqa: S608 - fixed names
        args: tuple[str, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            args = (state,)
        rows = self._thread.conn().execute(sql + " ORDER BY created, id", args)
        return [dict(zip(_NAMES, r, strict=True)) for r in rows]

    def sent(self, claim_id: str) -> None:
        with self._thread.tx() as tx:
            tx.execute(
                "UPDATE claims SET attempts = attempts + 1, updated = ? WHERE id = ?",
                (self._clock(), claim_id),
            )

    def close(self, claim_id: str, reason: str) -> bool:
        """Refuse a pending claim that was never sent (its offer sold out meanwhile, by the
        gateway's signed notice); False when it was sent or answered meanwhile."""
        with self._thread.tx() as tx:
            cur = tx.execute(
                "UPDATE claims SET state = 'refused', code = 'sold_out', reason = ?,"
                " updated = ? WHERE id = ? AND state = 'pending' AND attempts = 0",
                (reason, self._clock(), claim_id),
            )
        return cur.rowcount == 1

    def answer(
        self, claim_id: str, *, granted: bool, code: str | None, reason: str, result_id: str
    ) -> bool:
        """Record a verified result of a pending claim, and the receipt that confirms it, in one
        transaction; False when the claim is unknown or already answered (the receipt is kept
        either way: the gateway re-sends until it sees one)."""
        with self._thread.tx() as tx:
            cur = tx.execute(
                "UPDATE claims SET state = ?, code = ?, reason = ?, result_id = ?,"
                " updated = ? WHERE id = ? AND state = 'pending'",
                (
                    "granted" if granted else "refused",
                    code,
                    reason,
                    result_id,
                    self._clock(),
                    claim_id,
                ),
            )
            tx.execute("INSERT OR IGNORE INTO receipts(id) VALUES (?)", (result_id,))
        return cur.rowcount == 1


def _row(db: sqlite3.Connection, column: str, value: str) -> dict[str, Any] | None:
    row = db.execute(
        f"SELECT {_COLS} FROM claims WHERE {column} = ?",  # noqa: S608 - fixed names
        (value,),
    ).fetchone()
    if row is None:
        return None
    return dict(zip(_NAMES, row, strict=True))
