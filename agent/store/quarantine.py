"""Outbox rows that cannot be sent (attrs that are not JSON or hold a NaN, written by an older
version or a bad disk; an item the batch envelope refuses): moved out of the outbox into the
`quarantine` table in the transaction that found them, counted, kept for export
(`GET /v1/quarantine`) and reported in status, so one poisoned row never stops the rows
behind it. Bounded: past `MAX_ROWS` the oldest are dropped (counted)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.store import outbox_sql
from agent.store.thread import StoreThread

MAX_ROWS = 1000
TABLES = {"signals": "signals", "outcomes": "outcomes"}
"""Batch part -> the outbox table its items come from (receipts and aggregates are ours)."""


@dataclass(frozen=True, slots=True)
class Poisoned:
    """One outbox row that cannot be sent, and why."""

    table: str
    id: str
    reason: str


def bad_items(exc: ValidationError, parts: dict[str, list[dict[str, Any]]]) -> list[Poisoned]:
    """The items of a batch that its envelope refused (`signals.3.kind`), by table and id."""
    found: dict[tuple[str, str], Poisoned] = {}
    for err in exc.errors(include_url=False, include_input=False):
        loc = err["loc"]
        if len(loc) < 2 or loc[0] not in TABLES or not isinstance(loc[1], int):
            continue
        items = parts[str(loc[0])]
        if 0 <= loc[1] < len(items):
            row_id = str(items[loc[1]].get("id", ""))
            why = ".".join(str(p) for p in loc) + ": " + err["msg"]
            found.setdefault((str(loc[0]), row_id), Poisoned(TABLES[str(loc[0])], row_id, why))
    return list(found.values())


def alone(
    build: Callable[[list[dict[str, Any]], list[dict[str, Any]]], object],
    signals: list[dict[str, Any]],
    outcomes: list[dict[str, Any]],
) -> list[Poisoned]:
    """The items that fail `build` on their own, when a batch failed for a reason no other
    check names. Empty when the failure is not the items' (a batch of none fails too)."""
    try:
        build([], [])
    except Exception:  # noqa: BLE001 - the batch machinery itself fails: not the items
        return []
    bad: list[Poisoned] = []
    for table, items in (("signals", signals), ("outcomes", outcomes)):
        for item in items:
            one = ([item], []) if table == "signals" else ([], [item])
            try:
                build(*one)
            except Exception as exc:  # noqa: BLE001 - the item is quarantined with it
                why = f"{type(exc).__name__}: {exc}"
                bad.append(Poisoned(table, str(item.get("id", "")), why[:500]))
    return bad


def move(tx: sqlite3.Connection, poisoned: Sequence[Poisoned], now: float) -> tuple[int, int]:
    """Move poisoned rows into the quarantine (same transaction); (signals, outcomes) moved and
    the quota bytes they held, as (rows, bytes) per table summed: returns (rows, bytes)."""
    rows = size = 0
    for item in poisoned:
        if item.table not in TABLES.values():
            continue
        cur = tx.execute(f"SELECT * FROM {item.table} WHERE id = ?", (item.id,))  # noqa: S608
        found = cur.fetchone()
        if found is None:
            continue
        names = [d[0] for d in cur.description]
        row = dict(zip(names, found, strict=True))
        size += int(row.get("size") or 0)
        tx.execute(
            "INSERT OR REPLACE INTO quarantine(id, source, row, reason, at) VALUES (?, ?, ?, ?, ?)",
            (item.id, item.table, json.dumps(row, default=str), item.reason[:500], now),
        )
        tx.execute(f"DELETE FROM {item.table} WHERE id = ?", (item.id,))  # noqa: S608
        rows += 1
    outbox_sql.meta_add(tx, "quarantined", rows)
    dropped = tx.execute(
        "DELETE FROM quarantine WHERE rowid IN (SELECT rowid FROM quarantine ORDER BY at DESC"
        " LIMIT -1 OFFSET ?)",
        (MAX_ROWS,),
    ).rowcount
    outbox_sql.meta_add(tx, "quarantine_dropped", int(dropped))
    return rows, size


class Quarantine:
    """What the quarantine holds: counts for status, rows for export."""

    def __init__(self, thread: StoreThread) -> None:
        self._thread = thread

    def rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest quarantined rows: `{"id", "source", "row", "reason", "at"}`."""
        found = self._thread.conn().execute(
            "SELECT id, source, row, reason, at FROM quarantine ORDER BY at DESC LIMIT ?",
            (limit,),
        )
        return [
            {"id": i, "source": s, "row": json.loads(r), "reason": why, "at": at}
            for i, s, r, why, at in found
        ]
