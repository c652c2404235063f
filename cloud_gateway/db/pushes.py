"""SQL of device-addressed pushes: signed bundles for one device, re-sent until its receipt.

Plain functions over a session, run on the store thread: `await db.call(outstanding, ...)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloud_gateway.db.backend import Session
from cloud_gateway.db.rows import json_object, to_text
from protocol.ids import format_time, parse_time


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
    store: Session, pushes: Iterable[DevicePush], supersede: str | None, *, per_device: bool = False
) -> None:
    """Record bundles to send; with `supersede`, earlier ones of that campaign stop re-sending
    (with `per_device`, only those of the devices these pushes go to)."""
    pushes = list(pushes)
    with store.transaction():
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
                    to_text(p.payload),
                    format_time(p.created_at),
                    format_time(p.expires_at),
                )
                for p in pushes
            ],
        )


def pushed_devices(store: Session, campaign_id: str) -> set[str]:
    """Devices holding (or about to hold) the campaign's current per-device offers."""
    rows = store.conn.execute(
        "SELECT DISTINCT device_id FROM device_pushes"
        " WHERE campaign_id = ? AND kind = 'offers' AND superseded = 0",
        [campaign_id],
    ).fetchall()
    return {r["device_id"] for r in rows}


def bundles_past_half_life(store: Session, now: datetime) -> dict[str, list[str]]:
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


def signed_by(store: Session, kids: Iterable[str]) -> dict[str, list[str]]:
    """Devices per live campaign whose current offers bundle was signed by one of `kids`."""
    wanted = sorted(set(kids))
    found: dict[str, list[str]] = {}
    if not wanted:
        return found
    # the payload is compact JSON: the text filter keeps the rows read to those it names,
    # then each is checked parsed
    signed = " OR ".join(["p.payload LIKE ?"] * len(wanted))  # placeholders only
    sql = (
        "SELECT p.campaign_id, p.device_id, p.payload FROM device_pushes p"  # noqa: S608 - placeholders
        " JOIN campaigns c ON c.id = p.campaign_id WHERE c.state = 'live'"
        " AND p.kind = 'offers' AND p.superseded = 0 AND p.quarantined IS NULL"
        " AND (" + signed + ") ORDER BY p.campaign_id, p.device_id"
    )
    for r in store.conn.execute(sql, [f'%"kid":"{kid}"%' for kid in wanted]):
        payload = json_object(r["payload"])
        if payload is not None and payload.get("kid") in wanted:
            found.setdefault(r["campaign_id"], []).append(r["device_id"])
    return found


def outstanding(
    store: Session, now: datetime, device_id: str | None = None, sent_before: datetime | None = None
) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(bundle_id, device_id, payload) of unexpired bundles with no receipt yet, but those
    quarantined; a payload that is not a JSON object reads as None (the caller quarantines
    it: `quarantine_push`)."""
    sql = (
        "SELECT bundle_id, device_id, payload FROM device_pushes WHERE receipt_at IS NULL"
        " AND superseded = 0 AND quarantined IS NULL AND expires_at > ?"
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
        (r["bundle_id"], r["device_id"], json_object(r["payload"]))
        for r in store.conn.execute(sql, params)
    ]


def quarantine_push(store: Session, bundle_id: str, reason: str) -> None:
    """Set a device push aside: kept (export, `quarantined_rows`), never sent again."""
    with store.transaction():
        store.conn.execute(
            "UPDATE device_pushes SET quarantined = ? WHERE bundle_id = ?",
            [reason[:500], bundle_id],
        )


def mark_sent(store: Session, bundle_ids: Sequence[str], at: datetime) -> None:
    with store.transaction():
        store.conn.executemany(
            "UPDATE device_pushes SET sent_at = ?, sends = sends + 1 WHERE bundle_id = ?",
            [(format_time(at), b) for b in bundle_ids],
        )


def apply_receipts(store: Session, device_id: str, ids: Sequence[str], at: datetime) -> int:
    """The device confirmed these bundles: stop re-sending them. Returns how many matched."""
    with store.transaction():
        cur = store.conn.executemany(
            "UPDATE device_pushes SET receipt_at = ? WHERE bundle_id = ? AND device_id = ?"
            " AND receipt_at IS NULL",
            [(format_time(at), b, device_id) for b in ids],
        )
    return max(cur.rowcount, 0)
