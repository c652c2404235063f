"""The social tables (issue 19): group and cut requests stored before they are sent and
answered once, and the latest verified state of each group or cut. Synchronous; runs on the
store thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from agent.store import idempotency
from agent.store.thread import StoreThread

_COLS = "id, action, campaign_id, offer_id, code, created, updated, attempts, state, ref, answer"
_NAMES = _COLS.replace(" ", "").split(",")


class SocialRows:
    """Requests by id, states by the group's or cut's id (`ref`)."""

    def __init__(self, thread: StoreThread, clock: Callable[[], float]) -> None:
        self._thread = thread
        self._clock = clock

    def open(
        self,
        request_id: str,
        action: str,
        *,
        campaign_id: str | None,
        offer_id: str | None,
        code: str | None,
    ) -> dict[str, Any]:
        """Store a new pending request (sent after this commits)."""
        self._thread.space.refuse_if_full()
        now = self._clock()
        with self._thread.tx() as tx:
            tx.execute(
                "INSERT INTO social_requests (id, action, campaign_id, offer_id, code, created,"
                " updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request_id, action, campaign_id, offer_id, code, now, now),
            )
            idempotency.record(tx, now)
            row = _request(tx, request_id)
        if row is None:  # pragma: no cover - written in this transaction
            raise LookupError(request_id)
        return row

    def get(self, request_id: str) -> dict[str, Any] | None:
        return _request(self._thread.conn(), request_id)

    def pending(self) -> list[dict[str, Any]]:
        rows = self._thread.conn().execute(
            f"SELECT {_COLS} FROM social_requests WHERE state = 'pending'"  # noqa: S608 - fixed
            " ORDER BY created, id"
        )
        return [dict(zip(_NAMES, r, strict=True)) for r in rows]

    def sent(self, request_id: str) -> None:
        with self._thread.tx() as tx:
            tx.execute(
                "UPDATE social_requests SET attempts = attempts + 1, updated = ? WHERE id = ?",
                (self._clock(), request_id),
            )

    def apply(
        self, *, request_id: str | None, ref: str | None, kind: str, issued_at: str, doc: str
    ) -> bool:
        """Record a verified state: the answer of its pending request, and the group's or
        cut's latest state unless a later one is held. False when nothing changed (a repeat,
        or an older state arriving late)."""
        changed = False
        with self._thread.tx() as tx:
            if request_id is not None:
                cur = tx.execute(
                    "UPDATE social_requests SET state = 'answered', ref = ?, answer = ?,"
                    " updated = ? WHERE id = ? AND state = 'pending'",
                    (ref, doc, self._clock(), request_id),
                )
                changed = cur.rowcount == 1
            if ref is not None:
                cur = tx.execute(
                    "INSERT INTO social_states (ref, kind, issued_at, doc) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (ref) DO UPDATE SET issued_at = excluded.issued_at,"
                    " doc = excluded.doc WHERE excluded.issued_at > social_states.issued_at",
                    (ref, kind, issued_at, doc),
                )
                changed = changed or cur.rowcount == 1
        return changed

    def state(self, ref: str) -> dict[str, Any] | None:
        row = (
            self._thread.conn()
            .execute("SELECT kind, issued_at, doc FROM social_states WHERE ref = ?", (ref,))
            .fetchone()
        )
        return None if row is None else {"kind": row[0], "issued_at": row[1], "doc": row[2]}


def _request(db: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    row = db.execute(
        f"SELECT {_COLS} FROM social_requests WHERE id = ?",  # noqa: S608 - fixed names
        (request_id,),
    ).fetchone()
    return None if row is None else dict(zip(_NAMES, row, strict=True))
