"""SQL of campaigns: their documents, published cohort catalogs, the raw material of their
results, and the markers of pushes a change owes (written in the change's own transaction;
see `cloud_gateway.campaigns.pending`).

Plain functions over a session, run on the store thread: `await db.call(get_campaign, id)`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from cloud_gateway.campaigns.pending import Owed, Pending
from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Session
from cloud_gateway.db.rows import to_text
from cloud_gateway.errors import Conflict
from protocol.ids import format_time


def _insert_campaign_row(store: Session, doc: dict[str, Any]) -> None:
    """A campaign document's row, inside the caller's transaction."""
    store.conn.execute(
        "INSERT INTO campaigns (id, name, state, doc, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [doc["id"], doc["name"], doc["state"], to_text(doc), doc["created_at"], doc["updated_at"]],
    )


def insert_campaign(store: Session, doc: dict[str, Any]) -> None:
    """A campaign's row alone (no offer ids, stock or audit): for tests and benchmarks."""
    with store.transaction():
        _insert_campaign_row(store, doc)


def get_campaign(store: Session, campaign_id: str) -> dict[str, Any] | None:
    row = store.one("SELECT doc FROM campaigns WHERE id = ?", [campaign_id])
    return json.loads(row["doc"]) if row else None


def list_campaigns(store: Session, state: str | None = None) -> list[dict[str, Any]]:
    if state is None:
        rows = store.rows("SELECT doc FROM campaigns ORDER BY created_at, id")
    else:
        rows = store.rows(
            "SELECT doc FROM campaigns WHERE state = ? ORDER BY created_at, id", [state]
        )
    return [json.loads(r["doc"]) for r in rows]


def record_catalog(  # noqa: PLR0917 - called as db.call(record_catalog, *args)
    store: Session,
    cohort: str,
    bundle_id: str,
    per_campaign: dict[str, int],
    published_at: datetime,
    expires_at: datetime,
) -> None:
    """One published cohort catalog: a push row per campaign in it, the cohort's latest."""
    at = format_time(published_at)
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO pushes (campaign_id, cohort, bundle_id, offers, at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(cid, cohort, bundle_id, n, at) for cid, n in per_campaign.items()],
        )
        store.conn.execute(
            "INSERT INTO catalogs (cohort, bundle_id, offers, published_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (cohort) DO UPDATE SET"
            " bundle_id = excluded.bundle_id, offers = excluded.offers,"
            " published_at = excluded.published_at, expires_at = excluded.expires_at",
            [cohort, bundle_id, sum(per_campaign.values()), at, format_time(expires_at)],
        )


def catalogs(store: Session) -> list[dict[str, Any]]:
    return store.rows("SELECT * FROM catalogs ORDER BY cohort")


def create_campaign(
    store: Session,
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
    with store.transaction():
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
        _insert_campaign_row(store, doc)
        conn.executemany(
            "INSERT INTO offer_ids (offer_id, campaign_id) VALUES (?, ?)",
            [(i, doc["id"]) for i in ids],
        )
        conn.executemany(
            "INSERT INTO offer_stock (campaign_id, offer_id, initial, stock)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(doc["id"], oid, n, n) for oid, n in stock],
        )
        insert_audit(store, who, "campaign.create", doc["id"], at, detail=detail)


def replace_draft(
    store: Session,
    doc: dict[str, Any],
    *,
    stock: Sequence[tuple[str, int]],
    who: str,
    at: datetime,
    detail: dict[str, Any],
) -> None:
    """A draft's new document, offer ids and stock, and its audit row, in one transaction.
    Raises Conflict when it is no longer a draft or an offer id is another campaign's."""
    conn = store.conn
    cid, ids = doc["id"], [o["id"] for o in doc["offers"]]
    with store.transaction():
        cur = conn.execute(
            "UPDATE campaigns SET name = ?, doc = ?, updated_at = ?"
            " WHERE id = ? AND state = 'draft'",
            [doc["name"], to_text(doc), doc["updated_at"], cid],
        )
        if cur.rowcount == 0:
            raise Conflict(
                f"campaign {cid} is no longer a draft (changed meanwhile)", field="state"
            )
        marks = ",".join("?" * len(ids))
        taken = conn.execute(
            f"SELECT offer_id, campaign_id FROM offer_ids WHERE offer_id IN ({marks})"  # noqa: S608 - placeholders only
            " AND campaign_id != ?",
            [*ids, cid],
        ).fetchall()
        if taken:
            raise Conflict(
                "offer ids are already used by other campaigns: "
                + ", ".join(f"{r['offer_id']} ({r['campaign_id']})" for r in taken),
                field="offers",
            )
        conn.execute("DELETE FROM offer_ids WHERE campaign_id = ?", [cid])
        conn.executemany(
            "INSERT INTO offer_ids (offer_id, campaign_id) VALUES (?, ?)", [(i, cid) for i in ids]
        )
        conn.execute("DELETE FROM offer_stock WHERE campaign_id = ?", [cid])
        conn.executemany(
            "INSERT INTO offer_stock (campaign_id, offer_id, initial, stock) VALUES (?, ?, ?, ?)",
            [(cid, oid, n, n) for oid, n in stock],
        )
        insert_audit(store, who, "campaign.edit", cid, at, detail=detail)


def add_owed(store: Session, owed: Iterable[Owed], at: datetime) -> None:
    """Insert markers inside the caller's transaction."""
    store.conn.executemany(
        "INSERT INTO campaign_pending (campaign_id, kind, cohorts, revokes, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [
            (
                o.campaign_id,
                o.kind,
                to_text(list(o.cohorts)),
                to_text(list(o.revokes)),
                format_time(at),
            )
            for o in owed
        ],
    )


def change_campaign(
    store: Session,
    doc: dict[str, Any],
    *,
    who: str,
    action: str,
    detail: dict[str, Any],
    at: datetime,
    owed: Sequence[Owed],
    from_state: str | None = None,
) -> None:
    """The new campaign document, its audit row and the pushes it owes: one transaction.

    With `from_state`, only if the campaign is still in it (a conditional UPDATE): of two
    workers applying one transition, the second raises Conflict and writes nothing."""
    conn = store.conn
    with store.transaction():
        where, params = "id = ?", [doc["id"]]
        if from_state is not None:
            where, params = "id = ? AND state = ?", [doc["id"], from_state]
        cur = conn.execute(
            f"UPDATE campaigns SET state = ?, doc = ?, updated_at = ? WHERE {where}",  # noqa: S608 - fixed text
            [doc["state"], to_text(doc), doc["updated_at"], *params],
        )
        if cur.rowcount == 0:
            raise Conflict(
                f"campaign {doc['id']} is no longer {from_state} (changed meanwhile)",
                field="state",
            )
        insert_audit(store, who, action, doc["id"], at, detail=detail)
        add_owed(store, owed, at)


def pending(store: Session) -> list[Pending]:
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
        for r in store.rows(
            "SELECT id, campaign_id, kind, cohorts, revokes FROM campaign_pending ORDER BY id"
        )
    ]


def clear_pending(store: Session, ids: Sequence[int]) -> None:
    with store.transaction():
        store.conn.executemany("DELETE FROM campaign_pending WHERE id = ?", [(i,) for i in ids])


def campaign_rows(store: Session, campaign_id: str) -> dict[str, Any]:
    """Raw material of a campaign's results (see `results.campaign_results`)."""
    conn = store.conn
    outcomes = [
        (r["device_id"], r["variant"], r["kind"], r["n"])
        for r in conn.execute(
            "SELECT device_id, variant, kind, count(*) AS n FROM outcomes WHERE campaign_id = ?"
            " GROUP BY device_id, variant, kind",
            [campaign_id],
        )
    ]
    device_pushes = [
        (r["device_id"], r["variant"], r["holdout"], r["offers"], r["receipt_at"] is not None)
        for r in conn.execute(
            "SELECT device_id, variant, holdout, offers, receipt_at FROM device_pushes"
            " WHERE campaign_id = ? AND kind = 'offers'",
            [campaign_id],
        )
    ]
    cohort = conn.execute(
        "SELECT coalesce(sum(offers), 0) AS offers, count(*) AS n FROM pushes"
        " WHERE campaign_id = ?",
        [campaign_id],
    ).fetchone()
    claims = [
        (r["offer_id"], r["granted"], r["n"])
        for r in conn.execute(
            "SELECT offer_id, granted, count(*) AS n FROM claims WHERE campaign_id = ?"
            " AND granted IS NOT NULL GROUP BY offer_id, granted",
            [campaign_id],
        )
    ]
    stock = [
        (r["offer_id"], r["initial"], r["stock"])
        for r in conn.execute(
            "SELECT offer_id, initial, stock FROM offer_stock WHERE campaign_id = ?", [campaign_id]
        )
    ]
    return {
        "outcomes": outcomes,
        "device_pushes": device_pushes,
        "cohort_offers": cohort["offers"] if cohort else 0,
        "cohort_publishes": cohort["n"] if cohort else 0,
        "claims": claims,
        "stock": stock,
    }
