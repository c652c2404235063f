"""SQL of campaigns beyond the catalogs: stock and claims, device facts, device pushes, results.

Plain functions over a `Store`, run on the store thread: `await db.call(claim_batch, ...)`.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloud_gateway.campaigns.model import Campaign, claim_refusal, needs_facts
from cloud_gateway.campaigns.pending import Owed, PendingKind, add_owed
from cloud_gateway.campaigns.targeting import DeviceFacts, parse_aggregate_key, window_bounds
from cloud_gateway.db.migrations import transaction
from cloud_gateway.db.store import Store
from cloud_gateway.errors import StoreError
from protocol.envelopes import ClaimRequest
from protocol.ids import format_time, parse_time

Sign = Callable[[dict[str, Any]], dict[str, Any]]
MakeResult = Callable[[str, ClaimRequest, bool, str | None, str], dict[str, Any]]
"""make(device_id, claim, granted, code, reason) -> the signed wire result."""


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------- stock and claims


def init_stock(store: Store, campaign_id: str, stock: Sequence[tuple[str, int]]) -> None:
    """The stock of each limited offer, set once (a relaunch keeps what is left)."""
    with transaction(store.conn):
        store.conn.executemany(
            "INSERT OR IGNORE INTO offer_stock (campaign_id, offer_id, initial, stock)"
            " VALUES (?, ?, ?, ?)",
            [(campaign_id, oid, n, n) for oid, n in stock],
        )


def stock_left(store: Store, campaign_id: str) -> dict[str, int]:
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
    store: Store,
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
    store: Store,
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
        with transaction(conn):
            for device_id, claim in claims:
                conn.execute(
                    "INSERT OR IGNORE INTO devices (device_id, status, first_seen, last_seen,"
                    " malformed) VALUES (?, 'offline', ?, ?, 0)",
                    [device_id, now, now],
                )
                cur = conn.execute(
                    "INSERT OR IGNORE INTO claims (device_id, id, offer_id, campaign_id, at,"
                    " received_at) VALUES (?, ?, ?, ?, ?, ?)",
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
                    [_json(result), int(granted), device_id, claim.id],
                )
                answers.append(
                    ClaimAnswer(device_id, claim.id, result, True, granted, len(sold_out) > sold)
                )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot decide {len(claims)} claims: {exc}") from exc
    return answers


# ---------------------------------------------------------------- device facts


def device_facts(store: Store, device_id: str | None = None) -> list[DeviceFacts]:
    """What targeting needs of every registered device (or of one): registry + reports.

    Reads what the agent really sends (see `targeting`): raw `member_tier`, `consumable_level`
    and `purchase` signals, and the aggregates `member_tier/tier=<n>`,
    `consumable_level/category=<c>/level=<l>` and `purchase/category=<c>`.
    """
    conn = store.conn
    args: list[Any] = [device_id]
    base = conn.execute(
        "SELECT device_id, profile, cohorts FROM devices WHERE ?1 IS NULL OR device_id = ?1", args
    ).fetchall()
    # State reports ranked by (time, batch, -level): the latest wins, ties go to the lowest.
    tiers: dict[str, tuple[tuple[datetime, int, float], int]] = {}
    levels: dict[str, dict[str, tuple[tuple[datetime, int, float], float]]] = {}
    bought: dict[str, dict[str, datetime]] = {}

    def keep_tier(did: str, rank: tuple[datetime, int, float], tier: int) -> None:
        if did not in tiers or tiers[did][0] < rank:
            tiers[did] = (rank, tier)

    def keep_level(did: str, cat: str, rank: tuple[datetime, int, float], level: float) -> None:
        known = levels.setdefault(did, {})
        if cat not in known or known[cat][0] < rank:
            known[cat] = (rank, level)

    def keep_purchase(did: str, cat: str, at: datetime) -> None:
        known = bought.setdefault(did, {})
        if cat not in known or known[cat] < at:
            known[cat] = at

    for r in conn.execute(
        "SELECT device_id, seq, window, key, count FROM aggregates"
        " WHERE (key LIKE 'member_tier/%' OR key LIKE 'consumable_level/%'"
        " OR key LIKE 'purchase/%') AND count > 0 AND (?1 IS NULL OR device_id = ?1)",
        args,
    ):
        bounds = window_bounds(r["window"])
        if bounds is None:
            continue
        kind, fields = parse_aggregate_key(r["key"])
        did = r["device_id"]
        try:
            if kind == "member_tier" and "tier" in fields:
                keep_tier(did, (bounds[0], r["seq"], 0.0), int(fields["tier"]))
            elif kind == "consumable_level" and "category" in fields and "level" in fields:
                level = float(fields["level"])
                keep_level(did, fields["category"], (bounds[0], r["seq"], -level), level)
            elif kind == "purchase" and "category" in fields:
                keep_purchase(did, fields["category"], bounds[1])
        except ValueError:
            continue
    # One row per (device, kind, category): SQLite takes the bare columns from the max(at) row.
    for r in conn.execute(
        "SELECT device_id, seq, kind, max(at) AS at, json_extract(attrs, '$.tier') AS tier,"
        " json_extract(attrs, '$.category') AS cat, json_extract(attrs, '$.level') AS level"
        " FROM signals WHERE kind IN ('member_tier', 'consumable_level', 'purchase')"
        " AND (?1 IS NULL OR device_id = ?1) GROUP BY device_id, kind, cat",
        args,
    ):
        try:
            at = parse_time(r["at"])
        except (ValueError, TypeError):
            continue
        did, cat = r["device_id"], r["cat"]
        if r["kind"] == "member_tier" and _number(r["tier"]):
            keep_tier(did, (at, r["seq"] or 0, 0.0), int(r["tier"]))
        elif r["kind"] == "consumable_level" and isinstance(cat, str) and _number(r["level"]):
            level = float(r["level"])
            keep_level(did, cat, (at, r["seq"] or 0, -level), level)
        elif r["kind"] == "purchase" and isinstance(cat, str):
            keep_purchase(did, cat, at)
    reported = {
        r["device_id"]
        for r in conn.execute(
            "SELECT device_id FROM devices d WHERE (?1 IS NULL OR device_id = ?1) AND ("
            " EXISTS (SELECT 1 FROM signals s WHERE s.device_id = d.device_id)"
            " OR EXISTS (SELECT 1 FROM aggregates a WHERE a.device_id = d.device_id))",
            args,
        )
    }
    out = []
    for r in base:
        did = r["device_id"]
        cohorts = frozenset(json.loads(r["cohorts"])) if r["cohorts"] else frozenset()
        tier = tiers.get(did)
        out.append(
            DeviceFacts(
                device_id=did,
                profile=r["profile"],
                cohorts=cohorts,
                member_tier=tier[1] if tier else None,
                levels={c: v for c, (_, v) in levels.get(did, {}).items()},
                last_purchase=bought.get(did, {}),
                reported=did in reported,
            )
        )
    return out


def _number(value: Any) -> bool:
    """True for a real number (JSON true/false are not levels or tiers)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------- device-addressed pushes


@dataclass(frozen=True, slots=True)
class DevicePush:
    """One signed bundle for one device, kept until its receipt arrives."""

    bundle_id: str
    device_id: str
    campaign_id: str
    variant: str | None
    holdout: bool
    kind: str  # offers | revoke
    offers: int
    payload: dict[str, Any]
    created_at: datetime
    expires_at: datetime


def add_device_pushes(
    store: Store, pushes: Iterable[DevicePush], supersede: str | None, *, per_device: bool = False
) -> None:
    """Record bundles to send; with `supersede`, earlier ones of that campaign stop re-sending
    (with `per_device`, only those of the devices these pushes go to)."""
    pushes = list(pushes)
    with transaction(store.conn):
        if supersede is not None and per_device:
            store.conn.executemany(
                "UPDATE device_pushes SET superseded = 1 WHERE campaign_id = ? AND device_id = ?"
                " AND superseded = 0",
                [(supersede, p.device_id) for p in pushes],
            )
        elif supersede is not None:
            store.conn.execute(
                "UPDATE device_pushes SET superseded = 1 WHERE campaign_id = ? AND superseded = 0",
                [supersede],
            )
        store.conn.executemany(
            "INSERT INTO device_pushes (bundle_id, device_id, campaign_id, variant, holdout, kind,"
            " offers, payload, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    p.bundle_id,
                    p.device_id,
                    p.campaign_id,
                    p.variant,
                    int(p.holdout),
                    p.kind,
                    p.offers,
                    _json(p.payload),
                    format_time(p.created_at),
                    format_time(p.expires_at),
                )
                for p in pushes
            ],
        )


def pushed_devices(store: Store, campaign_id: str) -> set[str]:
    """Devices holding (or about to hold) the campaign's current per-device offers."""
    rows = store.conn.execute(
        "SELECT DISTINCT device_id FROM device_pushes"
        " WHERE campaign_id = ? AND kind = 'offers' AND superseded = 0",
        [campaign_id],
    ).fetchall()
    return {r["device_id"] for r in rows}


def bundles_past_half_life(store: Store, now: datetime) -> dict[str, list[str]]:
    """Devices per campaign whose current offers bundle is past half its lifetime."""
    due: dict[str, list[str]] = {}
    for r in store.conn.execute(
        "SELECT p.campaign_id, p.device_id, p.created_at, p.expires_at FROM device_pushes p"
        " JOIN campaigns c ON c.id = p.campaign_id WHERE c.state = 'live'"
        " AND p.kind = 'offers' AND p.superseded = 0 AND p.expires_at > ?",
        [format_time(now)],
    ):
        created, expires = parse_time(r["created_at"]), parse_time(r["expires_at"])
        if now >= created + (expires - created) / 2:
            due.setdefault(r["campaign_id"], []).append(r["device_id"])
    return due


def outstanding(
    store: Store, now: datetime, device_id: str | None = None, sent_before: datetime | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """(bundle_id, device_id, payload) of unexpired bundles with no receipt yet."""
    sql = (
        "SELECT bundle_id, device_id, payload FROM device_pushes WHERE receipt_at IS NULL"
        " AND superseded = 0 AND expires_at > ?"
    )
    params: list[Any] = [format_time(now)]
    if device_id is not None:
        sql += " AND device_id = ?"
        params.append(device_id)
    if sent_before is not None:
        sql += " AND (sent_at IS NULL OR sent_at < ?)"
        params.append(format_time(sent_before))
    sql += " ORDER BY created_at, bundle_id LIMIT 10000"
    return [
        (r["bundle_id"], r["device_id"], json.loads(r["payload"]))
        for r in store.conn.execute(sql, params)
    ]


def mark_sent(store: Store, bundle_ids: Sequence[str], at: datetime) -> None:
    with transaction(store.conn):
        store.conn.executemany(
            "UPDATE device_pushes SET sent_at = ?, sends = sends + 1 WHERE bundle_id = ?",
            [(format_time(at), b) for b in bundle_ids],
        )


def apply_receipts(store: Store, device_id: str, ids: Sequence[str], at: datetime) -> int:
    """The device confirmed these bundles: stop re-sending them. Returns how many matched."""
    with transaction(store.conn):
        cur = store.conn.executemany(
            "UPDATE device_pushes SET receipt_at = ? WHERE bundle_id = ? AND device_id = ?"
            " AND receipt_at IS NULL",
            [(format_time(at), b, device_id) for b in ids],
        )
    return max(cur.rowcount, 0)


# ---------------------------------------------------------------- results


def campaign_rows(store: Store, campaign_id: str) -> dict[str, Any]:
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


def fleet_summary(store: Store) -> dict[str, Any]:
    """Devices by status and profile, for the dashboard."""
    rows = store.conn.execute(
        "SELECT coalesce(profile, 'unknown') AS profile, status, count(*) AS n FROM devices"
        " GROUP BY profile, status"
    ).fetchall()
    by_profile: dict[str, dict[str, int]] = {}
    total = online = 0
    for r in rows:
        by_profile.setdefault(r["profile"], {"online": 0, "offline": 0})[r["status"]] = r["n"]
        total += r["n"]
        online += r["n"] if r["status"] == "online" else 0
    pending = store.conn.execute(
        "SELECT count(*) AS n FROM device_pushes WHERE receipt_at IS NULL AND superseded = 0"
    ).fetchone()
    return {
        "devices": total,
        "online": online,
        "by_profile": by_profile,
        "bundles_awaiting_receipt": pending["n"] if pending else 0,
    }
