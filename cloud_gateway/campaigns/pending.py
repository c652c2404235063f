"""Campaign writes that commit together with what they owe: audit rows and pending pushes.

Crash consistency: a state change (launch, pause, end) and a sell-out each commit, with what
they change, a marker naming the pushes they owe: rebuild these cohort catalogs (and
revoke these offers), push a device campaign, revoke it, refresh its holders. The service
acts on the markers after the commit and deletes each once done; at start-up it acts on
those a crash left, so a committed change is never left unannounced (the pushes themselves
are idempotent: a catalog is rebuilt from the current state, device bundles supersede).
Plain functions over a `Store`, run on the store thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cloud_gateway.db.migrations import transaction
from cloud_gateway.db.store import Store, insert_audit, insert_campaign_row
from cloud_gateway.errors import Conflict
from protocol.ids import format_time

PendingKind = Literal["catalog", "device_launch", "device_revoke", "device_refresh"]


@dataclass(frozen=True, slots=True)
class Owed:
    """One push a change owes; `cohorts` and `revokes` matter for `catalog` only."""

    kind: PendingKind
    campaign_id: str
    cohorts: tuple[str, ...] = ()
    revokes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Pending:
    """A stored marker: `id` to delete it once its push is done."""

    id: int
    owed: Owed


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def create_campaign(
    store: Store,
    doc: dict[str, Any],
    *,
    stock: Sequence[tuple[str, int]],
    who: str,
    at: datetime,
    detail: dict[str, Any],
) -> None:
    """A new campaign, its offer ids (unique across campaigns), its stock and its audit row,
    in one transaction. Raises Conflict naming the offer ids another campaign already uses."""
    conn = store.conn
    ids = [o["id"] for o in doc["offers"]]
    with transaction(conn):
        marks = ",".join("?" * len(ids))
        taken = conn.execute(
            f"SELECT offer_id, campaign_id FROM offer_ids WHERE offer_id IN ({marks})",  # noqa: S608 - placeholders only
            ids,
        ).fetchall()
        if taken:
            raise Conflict(
                "offer ids are already used by other campaigns: "
                + ", ".join(f"{r['offer_id']} ({r['campaign_id']})" for r in taken),
                field="offers",
            )
        insert_campaign_row(conn, doc)
        conn.executemany(
            "INSERT INTO offer_ids (offer_id, campaign_id) VALUES (?, ?)",
            [(i, doc["id"]) for i in ids],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO offer_stock (campaign_id, offer_id, initial, stock)"
            " VALUES (?, ?, ?, ?)",
            [(doc["id"], oid, n, n) for oid, n in stock],
        )
        insert_audit(conn, who, "campaign.create", doc["id"], at, detail=detail)


def add_owed(store: Store, owed: Iterable[Owed], at: datetime) -> None:
    """Insert markers inside the caller's transaction."""
    store.conn.executemany(
        "INSERT INTO campaign_pending (campaign_id, kind, cohorts, revokes, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [
            (o.campaign_id, o.kind, _json(list(o.cohorts)), _json(list(o.revokes)), format_time(at))
            for o in owed
        ],
    )


def change_campaign(
    store: Store,
    doc: dict[str, Any],
    *,
    who: str,
    action: str,
    detail: dict[str, Any],
    at: datetime,
    owed: Sequence[Owed],
) -> None:
    """The new campaign document, its audit row and the pushes it owes: one transaction."""
    conn = store.conn
    with transaction(conn):
        conn.execute(
            "UPDATE campaigns SET state = ?, doc = ?, updated_at = ? WHERE id = ?",
            [doc["state"], _json(doc), doc["updated_at"], doc["id"]],
        )
        insert_audit(conn, who, action, doc["id"], at, detail=detail)
        add_owed(store, owed, at)


def pending(store: Store) -> list[Pending]:
    """Every marker not yet acted on, oldest first."""
    return [
        Pending(
            r["id"],
            Owed(
                r["kind"],
                r["campaign_id"],
                tuple(json.loads(r["cohorts"])),
                tuple(json.loads(r["revokes"])),
            ),
        )
        for r in store.conn.execute(
            "SELECT id, campaign_id, kind, cohorts, revokes FROM campaign_pending ORDER BY id"
        )
    ]


def clear_pending(store: Store, ids: Sequence[int]) -> None:
    with transaction(store.conn):
        store.conn.executemany("DELETE FROM campaign_pending WHERE id = ?", [(i,) for i in ids])
