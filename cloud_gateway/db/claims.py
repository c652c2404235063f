"""SQL of limited offers: stock set once per offer, claims decided once each with their
signed answer, one grant per device per offer, never past the stock, across workers.

Plain functions over a session, run on the store thread: `await db.call(claim_batch, ...)`.

Several gateway workers may decide claims on one PostgreSQL at once (issue 12). What keeps
that exact:
- the stock is taken by one conditional statement (`_take_one`), and the grant row's primary
  key (campaign, offer, device) is the one-per-device rule, in the batch's transaction;
- a claim is stored once under its key (device, claim id) with its signed answer: a claim
  delivered to two workers waits on the first one's uncommitted row, then reads its answer;
- every batch takes its row locks in one global order (devices, then claims, then each
  offer's stock before that offer's grants, offers sorted), so two batches never deadlock;
  a deadlock or serialization failure met anyway (another writer's order) retries the batch.
"""

from __future__ import annotations

import json
import logging
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

RETRIES = 3
"""Attempts of a batch that met a transient conflict (deadlock, serialization failure)."""
TRANSIENT = frozenset({"40001", "40P01"})
"""SQLSTATEs worth retrying: serialization_failure, deadlock_detected (PostgreSQL)."""
TAKE_ONE = (
    "UPDATE offer_stock SET stock = stock - 1 WHERE campaign_id = ? AND offer_id = ? AND stock > 0"
)

log = logging.getLogger(__name__)

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


def _take_one(store: Session, campaign_id: str, offer_id: str) -> int | None:
    """Take one coupon: the stock left after it, or None when none was left.

    One conditional statement on the offer's row. On PostgreSQL at READ COMMITTED a second
    worker's `UPDATE ... WHERE stock > 0` waits for the first one's row lock, then re-checks
    `stock > 0` against the newly committed row, so two workers never both take the last
    coupon (tests/gateway/test_claims_concurrent.py); on SQLite the write lock serializes whole
    transactions.
    """
    conn = store.conn
    key = [campaign_id, offer_id]
    if store.dialect.returning:
        row = conn.execute(TAKE_ONE + " RETURNING stock", key).fetchone()
        return None if row is None else int(row[0])
    if conn.execute(TAKE_ONE, key).rowcount != 1:
        return None
    left = conn.execute(
        "SELECT stock FROM offer_stock WHERE campaign_id = ? AND offer_id = ?", key
    ).fetchone()
    return int(left[0])


def _held_by(store: Session, campaign_id: str, offer_id: str, device_id: str) -> str | None:
    """The claim id of this device's committed grant of the offer, if any."""
    held = store.conn.execute(
        "SELECT claim_id FROM grants WHERE campaign_id = ? AND offer_id = ? AND device_id = ?",
        [campaign_id, offer_id, device_id],
    ).fetchone()
    return None if held is None else str(held["claim_id"])


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
    key = [claim.campaign_id, claim.offer_id]
    held = _held_by(store, claim.campaign_id, claim.offer_id, device_id)
    if held is not None:
        return False, None, f"already granted to this device (claim {held})"
    # The one write that matters: conditional, so stock can never pass below zero.
    left = _take_one(store, claim.campaign_id, claim.offer_id)
    if left is None:
        exists = conn.execute(
            "SELECT 1 FROM offer_stock WHERE campaign_id = ? AND offer_id = ?", key
        ).fetchone()
        if exists is None:
            return False, None, "no coupons for this offer (not limited, or no stock set)"
        return False, None, "sold out"
    code = secrets.token_hex(6).upper()
    cur = conn.execute(
        "INSERT INTO grants (campaign_id, offer_id, device_id, claim_id, code, at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [claim.campaign_id, claim.offer_id, device_id, claim.id, code, format_time(at)],
    )
    if cur.rowcount == 0:
        # Another claim of this device (another key, another worker) committed its grant
        # while this one waited for the stock: give the coupon back (the row is ours, locked).
        conn.execute(
            "UPDATE offer_stock SET stock = stock + 1 WHERE campaign_id = ? AND offer_id = ?", key
        )
        held = _held_by(store, claim.campaign_id, claim.offer_id, device_id)
        return False, None, f"already granted to this device (claim {held})"
    if left == 0:
        # The last coupon: devices must hide the offer. The re-announcement is owed in this
        # same transaction, so a crash right after the commit cannot lose it.
        kind: PendingKind = "device_refresh" if campaign.per_device else "catalog"
        add_owed(store, [Owed(kind, campaign.id, tuple(campaign.push_cohorts))], at)
        sold_out.append(claim.campaign_id)
    return True, code, "granted"


def _stored(store: Session, device_id: str, claim: ClaimRequest, now: str) -> Any:
    """Store the claim under its key; the stored row (result, granted) when the key was
    already there with an answer (a resend, or a copy another worker decided), else None."""
    conn = store.conn
    cur = conn.execute(
        "INSERT INTO claims (device_id, id, offer_id, campaign_id, at, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [device_id, claim.id, claim.offer_id, claim.campaign_id, format_time(claim.at), now],
    )
    if cur.rowcount != 0:
        return None
    row = conn.execute(
        "SELECT result, granted FROM claims WHERE device_id = ? AND id = ?", [device_id, claim.id]
    ).fetchone()
    return row if row is not None and row["result"] else None


def _decide_batch(
    store: Session,
    claims: Sequence[tuple[str, ClaimRequest]],
    make_result: MakeResult,
    received_at: datetime,
) -> list[ClaimAnswer]:
    """The body of `claim_batch`'s transaction; the answers in the order of `claims`."""
    now = format_time(received_at)
    conn = store.conn
    # Locks in one global order (see the module's docstring): devices, claims, then offers.
    conn.executemany(ENSURE_DEVICE, [(d, now, now) for d in sorted({d for d, _ in claims})])
    answers: list[ClaimAnswer | None] = [None] * len(claims)
    first: dict[tuple[str, str], int] = {}
    copies: list[tuple[int, int]] = []
    fresh: list[int] = []
    for i in sorted(range(len(claims)), key=lambda i: (claims[i][0], claims[i][1].id)):
        device_id, claim = claims[i]
        if (device_id, claim.id) in first:  # the same key twice in this batch
            copies.append((i, first[device_id, claim.id]))
            continue
        first[device_id, claim.id] = i
        row = _stored(store, device_id, claim, now)
        if row is not None:
            result = json.loads(row["result"])
            answers[i] = ClaimAnswer(device_id, claim.id, result, False, bool(row["granted"]))
        else:
            fresh.append(i)
    campaigns: dict[str, Campaign | None] = {}
    sold_out: list[str] = []
    fresh.sort(key=lambda i: (claims[i][1].campaign_id, claims[i][1].offer_id, claims[i][0]))
    for i in fresh:
        device_id, claim = claims[i]
        sold = len(sold_out)
        granted, code, reason = _decide(
            store, device_id, claim, received_at, campaigns=campaigns, sold_out=sold_out
        )
        result = make_result(device_id, claim, granted, code, reason)
        conn.execute(
            "UPDATE claims SET result = ?, granted = ? WHERE device_id = ? AND id = ?",
            [to_text(result), int(granted), device_id, claim.id],
        )
        answers[i] = ClaimAnswer(device_id, claim.id, result, True, granted, len(sold_out) > sold)
    for i, original in copies:
        done = answers[original]  # every first copy was answered above
        if done is not None:
            answers[i] = ClaimAnswer(
                done.device_id, done.claim_id, done.result, False, done.granted
            )
    return [a for a in answers if a is not None]


def claim_batch(
    store: Session,
    claims: Sequence[tuple[str, ClaimRequest]],
    make_result: MakeResult,
    received_at: datetime,
) -> list[ClaimAnswer]:
    """Decide claims in one transaction: each stored once with its signed answer.

    A repeated idempotency key gets the stored answer back, unchanged (also when another
    worker stored it). The stock decrement, the grant, the claim row and its answer commit
    together: a crash before COMMIT leaves none of it, after COMMIT all of it. A transient
    conflict (deadlock, serialization failure) rolls the batch back and decides it again.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            with store.transaction():
                return _decide_batch(store, claims, make_result, received_at)
        except Error as exc:
            if attempt < RETRIES and getattr(exc, "sqlstate", None) in TRANSIENT:
                log.info("claim batch met a transient conflict (%s); deciding it again", exc)
                continue
            raise StoreError(f"cannot decide {len(claims)} claims: {exc}") from exc
