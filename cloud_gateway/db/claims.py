"""SQL of limited offers: stock set once per offer, claims decided once each with their
signed answer, one grant per device per offer, never past the stock, across workers.

Plain functions over a session, run on the store thread: `await db.call(claim_batch, ...)`.

Several gateway workers may decide claims on one PostgreSQL at once (issue 12). What keeps
that exact:
- a batch decides each offer's claims together under that offer's stock row lock
  (`_decide_offer`): the grants devices hold read under it, the stock lowered by what was
  taken, and the grant row's primary key (campaign, offer, device) is the one-per-device
  rule, in the batch's transaction;
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


CLAIM_ROWS_PER_STATEMENT = 200
"""Claim rows in one multi-row INSERT (6 parameters each: far below either engine's limit)."""

Decision = tuple[bool, str | None, str, bool]
"""(granted, code, reason, took the last coupon) of one claim."""


def _insert_claims(
    store: Session, items: Sequence[tuple[str, ClaimRequest]], now: str
) -> set[tuple[str, str]]:
    """Store each claim under its key (device, claim id), in the order given (the lock
    order); the keys this call inserted. A key already there (a resend, or a copy another
    worker stored) is left alone: on PostgreSQL the insert waits for that worker's
    uncommitted row, so the key is then either answered or, if it rolled back, ours."""
    fresh: set[tuple[str, str]] = set()
    for start in range(0, len(items), CLAIM_ROWS_PER_STATEMENT):
        chunk = items[start : start + CLAIM_ROWS_PER_STATEMENT]
        values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
        parameters: list[object] = []
        for device_id, claim in chunk:
            parameters += (
                device_id,
                claim.id,
                claim.offer_id,
                claim.campaign_id,
                format_time(claim.at),
                now,
            )
        rows = store.conn.execute(
            "INSERT INTO claims (device_id, id, offer_id, campaign_id, at, received_at)"  # noqa: S608
            f" VALUES {values} ON CONFLICT DO NOTHING RETURNING device_id, id",
            parameters,
        ).fetchall()
        fresh.update((str(r[0]), str(r[1])) for r in rows)
    return fresh


def _answered(store: Session, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """The stored (result, granted) of claims already there, by key (those with an answer)."""
    found: dict[tuple[str, str], Any] = {}
    for start in range(0, len(keys), CLAIM_ROWS_PER_STATEMENT):
        chunk = keys[start : start + CLAIM_ROWS_PER_STATEMENT]
        values = ", ".join(["(?, ?)"] * len(chunk))
        rows = store.conn.execute(
            "SELECT device_id, id, result, granted FROM claims"  # noqa: S608
            f" WHERE (device_id, id) IN (VALUES {values})",
            [part for key in chunk for part in key],
        ).fetchall()
        found.update(((str(r[0]), str(r[1])), r) for r in rows if r[2])
    return found


def _campaign(
    store: Session, campaign_id: str, campaigns: dict[str, Campaign | None]
) -> Campaign | None:
    if campaign_id not in campaigns:
        row = store.conn.execute("SELECT doc FROM campaigns WHERE id = ?", [campaign_id]).fetchone()
        campaigns[campaign_id] = (
            Campaign.model_validate_json(row["doc"]) if row is not None else None
        )
    return campaigns[campaign_id]


def _decide_offer(
    store: Session,
    campaign: Campaign | None,
    offer_id: str,
    items: Sequence[tuple[int, str, ClaimRequest]],
    at: datetime,
) -> dict[int, Decision]:
    """The fresh claims of one offer, decided together inside the caller's transaction.

    Each device must be one the campaign reaches (audience, holdout, variant, the offer's
    window) before any stock is touched. Then the offer's stock row is locked (PostgreSQL:
    `FOR UPDATE`; SQLite holds the database's write lock) and, under that lock, the grants the
    devices already hold are read, the coupons handed out in the order given (one per
    device, never past the stock), the stock lowered by what was taken in one statement and
    the grants inserted in one. Another worker deciding the same offer waits on the lock and
    then sees these grants and this stock: never two grants for one device, never one past
    the stock, a few statements per offer instead of five per claim.
    """
    out: dict[int, Decision] = {}
    if campaign is None:
        return {i: (False, None, "unknown campaign", False) for i, _d, _c in items}
    if campaign.state != "live":
        return {i: (False, None, f"campaign is {campaign.state}", False) for i, _d, _c in items}
    wanting: list[tuple[int, str, ClaimRequest]] = []
    for i, device_id, claim in items:
        facts = None
        if needs_facts(campaign):
            found = device_facts(store, device_id)
            facts = found[0] if found else None
        refusal = claim_refusal(campaign, offer_id, device_id, facts, at)
        if refusal is not None:
            out[i] = (False, None, refusal, False)
        else:
            wanting.append((i, device_id, claim))
    if not wanting:
        return out
    conn = store.conn
    key = [campaign.id, offer_id]
    lock = " FOR UPDATE" if store.dialect.name == "postgresql" else ""
    row = conn.execute(
        f"SELECT stock FROM offer_stock WHERE campaign_id = ? AND offer_id = ?{lock}",  # noqa: S608
        key,
    ).fetchone()
    if row is None:
        reason = "no coupons for this offer (not limited, or no stock set)"
        out.update((i, (False, None, reason, False)) for i, _d, _c in wanting)
        return out
    devices = sorted({d for _i, d, _c in wanting})
    marks = ", ".join(["?"] * len(devices))
    held: dict[str, str] = {
        str(r[0]): str(r[1])
        for r in conn.execute(
            "SELECT device_id, claim_id FROM grants WHERE campaign_id = ? AND offer_id = ?"  # noqa: S608
            f" AND device_id IN ({marks})",
            [*key, *devices],
        )
    }
    stock = int(row[0])
    grants: list[tuple[int, str, ClaimRequest, str]] = []
    for i, device_id, claim in wanting:
        if device_id in held:
            out[i] = (
                False,
                None,
                f"already granted to this device (claim {held[device_id]})",
                False,
            )
        elif stock <= 0:
            out[i] = (False, None, "sold out", False)
        else:
            code = secrets.token_hex(6).upper()
            grants.append((i, device_id, claim, code))
            held[device_id] = claim.id
            stock -= 1
    if not grants:
        return out
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(grants))
    when = format_time(at)
    inserted = {
        str(r[0])
        for r in conn.execute(
            "INSERT INTO grants (campaign_id, offer_id, device_id, claim_id, code, at)"  # noqa: S608
            f" VALUES {values} ON CONFLICT DO NOTHING RETURNING device_id",
            [v for _i, d, c, code in grants for v in (*key, d, c.id, code, when)],
        )
    }
    taken = 0
    for i, device_id, _claim, code in grants:
        if device_id in inserted:  # always, under the stock lock; checked all the same
            out[i] = (True, code, "granted", False)
            taken += 1
        else:
            out[i] = (False, None, "already granted to this device", False)
    conn.execute(
        "UPDATE offer_stock SET stock = stock - ? WHERE campaign_id = ? AND offer_id = ?",
        [taken, *key],
    )
    if taken and int(row[0]) - taken == 0:
        last = max(i for i, d, _c, _code in grants if d in inserted)
        out[last] = (*out[last][:3], True)
        # The last coupon: devices must hide the offer. The re-announcement is owed in this
        # same transaction, so a crash right after the commit cannot lose it.
        kind: PendingKind = "device_refresh" if campaign.per_device else "catalog"
        add_owed(store, [Owed(kind, campaign.id, tuple(campaign.push_cohorts))], at)
    return out


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
    unique: list[int] = []
    for i in sorted(range(len(claims)), key=lambda i: (claims[i][0], claims[i][1].id)):
        device_id, claim = claims[i]
        if (device_id, claim.id) in first:  # the same key twice in this batch
            copies.append((i, first[device_id, claim.id]))
            continue
        first[device_id, claim.id] = i
        unique.append(i)
    fresh_keys = _insert_claims(store, [claims[i] for i in unique], now)
    keys = [(claims[i][0], claims[i][1].id) for i in unique]
    known = _answered(store, [k for k in keys if k not in fresh_keys])
    by_offer: dict[tuple[str, str], list[tuple[int, str, ClaimRequest]]] = {}
    for i in unique:
        device_id, claim = claims[i]
        row = known.get((device_id, claim.id))
        if row is not None:
            result = json.loads(row[2])
            answers[i] = ClaimAnswer(device_id, claim.id, result, False, bool(row[3]))
        else:
            by_offer.setdefault((claim.campaign_id, claim.offer_id), []).append(
                (i, device_id, claim)
            )
    campaigns: dict[str, Campaign | None] = {}
    stored: list[tuple[str, int, str, str]] = []
    for (campaign_id, offer_id), items in sorted(by_offer.items()):
        items.sort(key=lambda item: item[1])
        campaign = _campaign(store, campaign_id, campaigns)
        for i, (granted, code, reason, sold) in _decide_offer(
            store, campaign, offer_id, items, received_at
        ).items():
            device_id, claim = claims[i]
            result = make_result(device_id, claim, granted, code, reason)
            stored.append((to_text(result), int(granted), device_id, claim.id))
            answers[i] = ClaimAnswer(device_id, claim.id, result, True, granted, sold)
    conn.executemany(
        "UPDATE claims SET result = ?, granted = ? WHERE device_id = ? AND id = ?", stored
    )
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
