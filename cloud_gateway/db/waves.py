"""SQL of live-sale waves (issue 19): each wave's time and offers, stock added or pulled
during the sale, and what is sold out now per cohort of the live wave campaigns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cloud_gateway.campaigns.model import Campaign
from cloud_gateway.campaigns.pending import Owed, PendingKind
from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Error, Session
from cloud_gateway.db.campaigns import add_owed
from cloud_gateway.errors import InvalidInput, NotFound, StoreError
from protocol.ids import format_time


def record_waves(
    store: Session, campaign_id: str, waves: Sequence[tuple[datetime, list[str]]]
) -> None:
    """The waves of a campaign just created: (time, offer ids) each, numbered from 1."""
    try:
        with store.transaction():
            store.conn.executemany(
                "INSERT INTO live_waves (campaign_id, wave, at, offers) VALUES (?, ?, ?, ?)",
                [
                    (campaign_id, n, format_time(when), json.dumps(ids))
                    for n, (when, ids) in enumerate(waves, start=1)
                ],
            )
    except Error as exc:
        raise StoreError(f"cannot record the waves of {campaign_id!r}: {exc}") from exc


def waves_of(store: Session, campaign_id: str) -> list[dict[str, Any]]:
    """Each wave with its offers' stock: initial (as now, after changes), left, taken."""
    rows = store.rows(
        "SELECT wave, at, offers FROM live_waves WHERE campaign_id = ? ORDER BY wave",
        [campaign_id],
    )
    if not rows:
        raise NotFound("live sale", campaign_id)
    stock = {
        r["offer_id"]: (int(r["initial"]), int(r["stock"]))
        for r in store.rows(
            "SELECT offer_id, initial, stock FROM offer_stock WHERE campaign_id = ?",
            [campaign_id],
        )
    }
    out = []
    for r in rows:
        offers = []
        for oid in json.loads(r["offers"]):
            initial, left = stock.get(oid, (0, 0))
            offers.append(
                {
                    "offer_id": oid,
                    "initial": initial,
                    "left": left,
                    "taken": initial - left,
                    "sold_out": left == 0,
                }
            )
        out.append({"wave": int(r["wave"]), "at": r["at"], "offers": offers})
    return out


def change_stock(
    store: Session, campaign_id: str, offer_id: str, delta: int, *, who: str, at: datetime
) -> dict[str, int]:
    """Add (`delta` > 0) or pull (< 0, at most what is left) coupons of a wave's offer during
    the sale. `initial` moves with it, so `initial - stock` still counts the grants. The
    catalogs are owed again (their stock figures) in the same transaction."""
    grow = "CASE WHEN stock + ? < 0 THEN 0 ELSE stock + ? END"
    try:
        with store.transaction():
            doc = store.one("SELECT doc FROM campaigns WHERE id = ?", [campaign_id])
            if doc is None:
                raise NotFound("campaign", campaign_id)
            row = store.conn.execute(
                f"UPDATE offer_stock SET initial = initial - stock + {grow},"  # noqa: S608
                f" stock = {grow} WHERE campaign_id = ? AND offer_id = ?"
                " RETURNING initial, stock",
                [delta, delta, delta, delta, campaign_id, offer_id],
            ).fetchone()
            if row is None:
                raise InvalidInput(f"offer {offer_id!r} of {campaign_id!r} has no stock")
            campaign = Campaign.model_validate_json(doc["doc"])
            kind: PendingKind = "device_refresh" if campaign.per_device else "catalog"
            add_owed(store, [Owed(kind, campaign_id, tuple(campaign.push_cohorts))], at)
            insert_audit(
                store,
                who,
                "wave.stock",
                f"campaign:{campaign_id}",
                at,
                detail={"offer_id": offer_id, "delta": delta, "stock": int(row[1])},
            )
            return {"initial": int(row[0]), "stock": int(row[1])}
    except Error as exc:
        raise StoreError(f"cannot change the stock of {offer_id!r}: {exc}") from exc


def sold_out_by_cohort(store: Session) -> dict[str, list[str]]:
    """For every cohort of a live campaign with waves: its wave offers sold out now."""
    rows = store.rows(
        "SELECT c.doc, w.offers FROM live_waves w JOIN campaigns c ON c.id = w.campaign_id"
        " WHERE c.state = 'live'"
    )
    if not rows:
        return {}
    gone = {
        (r["campaign_id"], r["offer_id"])
        for r in store.rows("SELECT campaign_id, offer_id FROM offer_stock WHERE stock <= 0")
    }
    out: dict[str, set[str]] = {}
    for r in rows:
        campaign = Campaign.model_validate_json(r["doc"])
        sold = {o for o in json.loads(r["offers"]) if (campaign.id, o) in gone}
        for cohort in campaign.cohorts:  # what devices subscribe to (per-device ones too)
            out.setdefault(cohort, set()).update(sold)
    return {c: sorted(ids) for c, ids in out.items()}


def next_wave(store: Session, after: str) -> str | None:
    """The time of the next wave of a live campaign after `after` (RFC 3339), or None."""
    row = store.one(
        "SELECT min(w.at) AS at FROM live_waves w JOIN campaigns c ON c.id = w.campaign_id"
        " WHERE c.state = 'live' AND w.at > ?",
        [after],
    )
    return None if row is None or row["at"] is None else str(row["at"])


def admission_offers(store: Session, revealed_by: str) -> list[dict[str, Any]]:
    """The offers with an admission share of live wave campaigns revealed by `revealed_by`
    (RFC 3339): offer_id, cohorts, admit (the share at the reveal), taken, left."""
    rows = store.rows(
        "SELECT c.doc, w.offers FROM live_waves w JOIN campaigns c ON c.id = w.campaign_id"
        " WHERE c.state = 'live' AND w.at <= ?",
        [revealed_by],
    )
    if not rows:
        return []
    stock = {
        (r["campaign_id"], r["offer_id"]): (int(r["initial"]), int(r["stock"]))
        for r in store.rows("SELECT campaign_id, offer_id, initial, stock FROM offer_stock")
    }
    out = []
    for r in rows:
        campaign = Campaign.model_validate_json(r["doc"])
        wave = set(json.loads(r["offers"]))
        for tpl in campaign.offers:
            if tpl.id not in wave or tpl.admit is None:
                continue
            initial, left = stock.get((campaign.id, tpl.id), (0, 0))
            out.append(
                {
                    "offer_id": tpl.id,
                    "cohorts": list(campaign.cohorts),
                    "admit": tpl.admit,
                    "taken": initial - left,
                    "left": left,
                }
            )
    return out
