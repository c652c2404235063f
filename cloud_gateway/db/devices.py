"""SQL of the device registry: devices listed and shown, everything held for one (export),
what targeting needs of each (facts), the fleet at a glance.

Plain functions over a session, run on the store thread: `await db.call(get_device, id)`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from cloud_gateway.campaigns.targeting import DeviceFacts, parse_aggregate_key, window_bounds
from cloud_gateway.db.backend import Session
from cloud_gateway.db.finite import finite_or_none, from_text
from protocol.ids import parse_time


def list_devices(store: Session) -> list[dict[str, Any]]:
    return [_device_view(r) for r in store.rows("SELECT * FROM devices ORDER BY device_id")]


def get_device(store: Session, device_id: str) -> dict[str, Any] | None:
    row = store.one("SELECT * FROM devices WHERE device_id = ?", [device_id])
    if row is None:
        return None
    view = _device_view(row)
    for table, key in (("batches", "batches"), ("signals", "signals_stored")):
        count = store.one(f"SELECT count(*) AS n FROM {table} WHERE device_id = ?", [device_id])  # noqa: S608 - fixed table names
        view[key] = count["n"] if count else 0
    count = store.one("SELECT count(*) AS n FROM outcomes WHERE device_id = ?", [device_id])
    view["outcomes_stored"] = count["n"] if count else 0
    view["aggregates_cover"] = aggregate_coverage(store, device_id)
    return view


def _device_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "device_id": row["device_id"],
        "status": row["status"],
        "profile": row["profile"],
        "first_seen": row["first_seen"],
        "last_seen": row["last_seen"],
        "agent_version": row["agent_version"],
        "model_version": row["model_version"],
        "last_seq": row["last_seq"],
        "cohorts": json.loads(row["cohorts"]) if row["cohorts"] else [],
        "stats": from_text(row["stats"]) if row["stats"] else {},
        "malformed": row["malformed"],
        "policy_version": row.get("policy_version"),
    }


def export_device(store: Session, device_id: str) -> dict[str, Any] | None:
    """Everything the gateway holds for a device (right of access); None when unknown."""
    registry = get_device(store, device_id)
    if registry is None:
        return None
    signals = [
        {**r, "attrs": from_text(r["attrs"])}
        for r in store.rows(
            "SELECT id, seq, kind, at, attrs FROM signals WHERE device_id = ? ORDER BY id",
            [device_id],
        )
    ]
    aggregates = store.rows(
        'SELECT seq, "window", key, count, seconds FROM aggregates WHERE device_id = ?'
        ' ORDER BY seq, "window", key',
        [device_id],
    )
    outcomes = [
        {**r, "score": finite_or_none(r["score"])}
        for r in store.rows(
            "SELECT id, seq, offer_id, campaign_id, variant, kind, at, surface, score,"
            " model_version FROM outcomes WHERE device_id = ? ORDER BY id",
            [device_id],
        )
    ]
    features = [
        {"id": r["id"], "features": from_text(r["features"])}
        for r in store.rows(
            "SELECT id, features FROM outcome_features WHERE device_id = ? ORDER BY id",
            [device_id],
        )
    ]
    claims = [
        {**r, "result": json.loads(r["result"]) if r["result"] else None}
        for r in store.rows(
            "SELECT id, offer_id, campaign_id, at, received_at, granted, result FROM claims"
            " WHERE device_id = ? ORDER BY id",
            [device_id],
        )
    ]
    grants = store.rows(
        "SELECT campaign_id, offer_id, claim_id, code, at FROM grants WHERE device_id = ?"
        " ORDER BY at, claim_id",
        [device_id],
    )
    pushes = store.rows(
        "SELECT bundle_id, campaign_id, variant, holdout, kind, offers, created_at,"
        " expires_at, sent_at, sends, receipt_at, quarantined FROM device_pushes"
        " WHERE device_id = ?"
        " ORDER BY created_at, bundle_id",
        [device_id],
    )
    return {
        "device_id": device_id,
        "registry": registry,
        "signals": signals,
        "aggregates": aggregates,
        "outcomes": outcomes,
        "outcome_features": features,
        "claims": claims,
        "grants": grants,
        "device_pushes": pushes,
    }


def aggregate_coverage(store: Session, device_id: str) -> int:
    """How many signals the device's latest aggregates cover (loss accounting)."""
    row = store.one(
        "SELECT coalesce(sum(count), 0) AS n FROM aggregates WHERE device_id = ?", [device_id]
    )
    return int(row["n"]) if row else 0


def device_facts(store: Session, device_id: str | None = None) -> list[DeviceFacts]:
    """What targeting needs of every registered device (or of one): registry + reports.

    Reads what the agent really sends (see `targeting`): raw `member_tier`, `consumable_level`
    and `purchase` signals, and the aggregates `member_tier/tier=<n>`,
    `consumable_level/category=<c>/level=<l>` and `purchase/category=<c>`.
    """
    conn = store.conn
    # "Every device, or this one": the id twice, typed, as both dialects accept it.
    args: list[Any] = [device_id, device_id]
    base = conn.execute(
        "SELECT device_id, profile, cohorts FROM devices"
        " WHERE CAST(? AS TEXT) IS NULL OR device_id = ?",
        args,
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
        'SELECT device_id, seq, "window", key, count FROM aggregates'
        " WHERE (key LIKE 'member_tier/%' OR key LIKE 'consumable_level/%'"
        " OR key LIKE 'purchase/%') AND count > 0"
        " AND (CAST(? AS TEXT) IS NULL OR device_id = ?)",
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
    # One row per (device, kind, category): the latest report of each (the dialects differ).
    for r in conn.execute(store.dialect.latest_reported_signals, args):
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
            "SELECT device_id FROM devices d WHERE (CAST(? AS TEXT) IS NULL OR device_id = ?) AND ("
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


def fleet_summary(store: Session) -> dict[str, Any]:
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
