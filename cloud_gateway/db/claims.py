"""SQL of limited offers: stock set once per offer, claims decided once each with their
signed answer, one grant per device per offer, never past the stock.

Plain functions over a session, run on the store thread: `await db.call(claim_batch, ...)`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloud_gateway.campaigns.model import Campaign, claim_refusal, needs_facts
from cloud_gateway.campaigns.pending import Owed, PendingKind
from cloud_gateway.db.backend import Error, Session
from cloud_gateway.db.campaigns import add_owed
from cloud_gateway.db.devices import device_facts
from cloud_gateway.db.ingest import ENSURE_DEVICE
from cloud_gateway.db.rows import to_text
from cloud_gateway.errors import StoreError
from protocol.envelopes import ClaimRequest
from protocol.ids import format_time

MakeResult = Callable[[str, ClaimRequest, bool, str | None, str], dict[str, Any]]
"""make(device_id, claim, granted, code, reason) -> the signed wire result."""


def init_stock(store: Session, campaign_id: str, stock: Sequence[tuple[str, int]]) -> None:
    """The stock of each limited offer, set once (a relaunch keeps what is left)."""
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO offer_stock (campaign_id, offer_id, initial, stock)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(campaign_id, oid, n, n) for oid, n in stock],
        )


def stock_left(store: Session, campaign_id: str) -> dict[str, int]:
    rows = store.conn.execute(
        "SELECT offer_id, stock FROM offer_stock WHERE campaign_id = ?", [campaign_id]
    ).fetchall()
    return {r["offer_id"]: r["stock"] for r in rows}


@dataclass(frozen=True, slots=True)
class ClaimAnswer:
    """The stored, signed answer to one claim; `new` is False for a repeated key."""

    device_id: str
    claim_id: str
    result: dict[str, Any]
    new: bool
    granted: bool
    sold_out: bool = False
    """This grant took the last coupon: catalogs or bundles are owed (`campaign_pending`)."""


def _decide(
    store: Session,
    device_id: str,
    claim: ClaimRequest,
    at: datetime,
    *,
    campaigns: dict[str, Campaign | None],
    sold_out: list[str],
) -> tuple[bool, str | None, str]:
    """One claim's decision inside the caller's transaction: (granted, code, reason).

    The device must be one the campaign reaches (audience, holdout, variant, the offer's
    window) before any stock is touched. `campaigns` caches the parsed campaigns of a batch.
    """
    conn = store.conn
    if claim.campaign_id not in campaigns:
        row = conn.execute("SELECT doc FROM campaigns WHERE id = ?", [claim.campaign_id]).fetchone()
        campaigns[claim.campaign_id] = (
            Campaign.model_validate_json(row["doc"]) if row is not None else None
        )
    campaign = campaigns[claim.campaign_id]
    if campaign is None:
        return False, None, "unknown campaign"
    if campaign.state != "live":
        return False, None, f"campaign is {campaign.state}"
    facts = None
    if needs_facts(campaign):
        found = device_facts(store, device_id)
        facts = found[0] if found else None
    refusal = claim_refusal(campaign, claim.offer_id, device_id, facts, at)
    if refusal is not None:
        return False, None, refusal
    stock = conn.execute(
        "SELECT 1 FROM offer_stock WHERE campaign_id = ? AND offer_id = ?",
        [claim.campaign_id, claim.offer_id],
    ).fetchone()
    if stock is None:
        return False, None, "no coupons for this offer (not limited, or no stock set)"
    held = conn.execute(
        "SELECT claim_id FROM grants WHERE campaign_id = ? AND offer_id = ? AND device_id = ?",
        [claim.campaign_id, claim.offer_id, device_id],
    ).fetchone()
    if held is not None:
        return False, None, f"already granted to this device (claim {held['claim_id']})"
    # The one write that matters: conditional, so stock can never pass below zero.
    cur = conn.execute(
        "UPDATE offer_stock SET stock = stock - 1"
        " WHERE campaign_id = ? AND offer_id = ? AND stock > 0",
        [claim.campaign_id, claim.offer_id],
    )
    if cur.rowcount != 1:
        return False, None, "sold out"
    left = conn.execute(
        "SELECT stock FROM offer_stock WHERE campaign_id = ? AND offer_id = ?",
        [claim.campaign_id, claim.offer_id],
    ).fetchone()
    if left is not None and left["stock"] == 0:
        # The last coupon: devices must hide the offer. The re-announcement is owed in this
        # same transaction, so a crash right after the commit cannot lose it.
        kind: PendingKind = "device_refresh" if campaign.per_device else "catalog"
        add_owed(store, [Owed(kind, campaign.id, tuple(campaign.push_cohorts))], at)
        sold_out.append(claim.campaign_id)
    code = secrets.token_hex(6).upper()
    conn.execute(
        "INSERT INTO grants (campaign_id, offer_id, device_id, claim_id, code, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [claim.campaign_id, claim.offer_id, device_id, claim.id, code, format_time(at)],
    )
    return True, code, "granted"


def claim_batch(
    store: Session,
    claims: Sequence[tuple[str, ClaimRequest]],
    make_result: MakeResult,
    received_at: datetime,
) -> list[ClaimAnswer]:
    """Decide claims in one transaction: each stored once with its signed answer.

    A repeated idempotency key gets the stored answer back, unchanged. The stock decrement
    is `UPDATE ... WHERE stock > 0` in the same transaction as the claim row and its answer:
    a crash before COMMIT leaves none of it, after COMMIT all of it.
    """
    now = format_time(received_at)
    answers: list[ClaimAnswer] = []
    campaigns: dict[str, Campaign | None] = {}
    sold_out: list[str] = []
    conn = store.conn
    try:
        with store.transaction():
            for device_id, claim in claims:
                conn.execute(ENSURE_DEVICE, [device_id, now, now])
                cur = conn.execute(
                    "INSERT INTO claims (device_id, id, offer_id, campaign_id, at,"
                    " received_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [
                        device_id,
                        claim.id,
                        claim.offer_id,
                        claim.campaign_id,
                        format_time(claim.at),
                        now,
                    ],
                )
                if cur.rowcount == 0:
                    row = conn.execute(
                        "SELECT result, granted FROM claims WHERE device_id = ? AND id = ?",
                        [device_id, claim.id],
                    ).fetchone()
                    if row is not None and row["result"]:
                        answers.append(
                            ClaimAnswer(
                                device_id,
                                claim.id,
                                json.loads(row["result"]),
                                False,
                                bool(row["granted"]),
                            )
                        )
                        continue
                sold = len(sold_out)
                granted, code, reason = _decide(
                    store, device_id, claim, received_at, campaigns=campaigns, sold_out=sold_out
                )
                result = make_result(device_id, claim, granted, code, reason)
                conn.execute(
                    "UPDATE claims SET result = ?, granted = ? WHERE device_id = ? AND id = ?",
                    [to_text(result), int(granted), device_id, claim.id],
                )
                answers.append(
                    ClaimAnswer(device_id, claim.id, result, True, granted, len(sold_out) > sold)
                )
    except Error as exc:
        raise StoreError(f"cannot decide {len(claims)} claims: {exc}") from exc
    return answers
