"""SQL of members, their devices and the points ledger (issue 19), on both backends.

Exactness: every entry has a source key (`members.ledger.source_hash` of e.g.
`conversion:<device>:<outcome id>` or an operator's purchase id); the key goes into
`member_sources` first (`ON CONFLICT DO NOTHING RETURNING`), so a redelivered outcome or a
repeated request finds it taken and credits nothing, on either backend and across workers.
A member's `balance`, `earned` and `spent` change in the same transaction as the entry; a
spend lowers the balance only where it covers it (`balance >= ?` in the UPDATE), atomic on
both engines. An erased member's entries are folded into `member_ledger_erased` (per kind:
entries, points) and deleted with the member; the source keys stay (they hold no person),
so the ledger's totals are the same before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Error, Session
from cloud_gateway.errors import Conflict, NotFound, StoreError
from cloud_gateway.members.ledger import (
    EARNING,
    SPEND,
    Entry,
    TierFigures,
    source_hash,
    tier_figures,
)
from protocol.envelopes import Outcome
from protocol.ids import format_time, new_id

ERASED = "erased"
"""The member id figures show for the erased members' folded entries."""


@dataclass(frozen=True, slots=True)
class Posted:
    """What `post_entry` did: the member after it and whether the entry is new."""

    member: dict[str, Any]
    new: bool
    entry_id: str | None


def _member(store: Session, member_id: str) -> dict[str, Any]:
    row = store.one(
        "SELECT id, household_id, balance, earned, spent, version, created_at FROM members"
        " WHERE id = ?",
        [member_id],
    )
    if row is None:
        raise NotFound("member", member_id)
    devices = store.rows(
        "SELECT device_id FROM member_devices WHERE member_id = ? ORDER BY device_id",
        [member_id],
    )
    row["devices"] = [d["device_id"] for d in devices]
    return row


def create_member(
    store: Session, member_id: str, household_id: str | None, who: str, at: datetime
) -> dict[str, Any]:
    """A new member with no points (a 409 when the id exists)."""
    try:
        with store.transaction():
            rows = store.conn.execute(
                "INSERT INTO members (id, household_id, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING id",
                [member_id, household_id, format_time(at)],
            ).fetchall()
            if not rows:
                raise Conflict(f"member {member_id!r} exists", field="id")
            insert_audit(store, who, "member.create", f"member:{member_id}", at)
            return _member(store, member_id)
    except Error as exc:
        raise StoreError(f"cannot create member {member_id!r}: {exc}") from exc


def get_member(store: Session, member_id: str) -> dict[str, Any]:
    return _member(store, member_id)


def list_members(store: Session, limit: int = 1000) -> list[dict[str, Any]]:
    return store.rows(
        "SELECT id, household_id, balance, earned, spent, version, created_at FROM members"
        " ORDER BY id LIMIT ?",
        [limit],
    )


def link_device(
    store: Session, member_id: str, device_id: str, who: str, at: datetime
) -> tuple[dict[str, Any], str | None]:
    """The device now belongs to the member (one member per device). Answers the member and
    the member the device belonged to before (its status is to clear), if another."""
    try:
        with store.transaction():
            _member(store, member_id)
            before = store.one(
                "SELECT member_id FROM member_devices WHERE device_id = ?", [device_id]
            )
            store.conn.execute(
                "INSERT INTO member_devices (device_id, member_id, linked_at) VALUES (?, ?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET member_id = excluded.member_id,"
                " linked_at = excluded.linked_at",
                [device_id, member_id, format_time(at)],
            )
            _bump(store, member_id)
            insert_audit(
                store,
                who,
                "member.link",
                f"member:{member_id}",
                at,
                detail={"device_id": device_id},
            )
            previous = before["member_id"] if before is not None else None
            return _member(store, member_id), previous if previous != member_id else None
    except Error as exc:
        raise StoreError(f"cannot link {device_id!r} to {member_id!r}: {exc}") from exc


def _bump(store: Session, member_id: str) -> None:
    store.conn.execute("UPDATE members SET version = version + 1 WHERE id = ?", [member_id])


def _take_source(store: Session, source: str, now: str) -> bool:
    rows = store.conn.execute(
        "INSERT INTO member_sources (source, at) VALUES (?, ?) ON CONFLICT DO NOTHING"
        " RETURNING source",
        [source, now],
    ).fetchall()
    return bool(rows)


def _insert_entry(store: Session, member_id: str, entry: Entry, source: str, now: str) -> str:
    entry_id = new_id()
    store.conn.execute(
        "INSERT INTO member_ledger (id, member_id, source, kind, points, campaign_id, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [entry_id, member_id, source, entry.kind, entry.points, entry.campaign_id, now],
    )
    return entry_id


def post_entry(store: Session, member_id: str, entry: Entry, who: str, at: datetime) -> Posted:
    """Add one entry under its source key: earned points raise balance and `earned`, a
    spend lowers the balance (a 409 when it does not cover it) and raises `spent`. The same
    source key again changes nothing (`new` False)."""
    now = format_time(at)
    source = source_hash(entry.source)
    try:
        with store.transaction():
            _member(store, member_id)
            if not _take_source(store, source, now):
                return Posted(_member(store, member_id), False, None)
            if entry.kind == SPEND:
                moved = store.conn.execute(
                    "UPDATE members SET balance = balance - ?, spent = spent + ?,"
                    " version = version + 1 WHERE id = ? AND balance >= ?",
                    [entry.points, entry.points, member_id, entry.points],
                ).rowcount
                if moved != 1:
                    raise Conflict(
                        f"member {member_id!r} has fewer than {entry.points} points",
                        field="points",
                    )
                signed = Entry(entry.kind, -entry.points, entry.source, entry.campaign_id)
            else:
                moved = store.conn.execute(
                    "UPDATE members SET balance = balance + ?, earned = earned + ?,"
                    " version = version + 1 WHERE id = ?",
                    [entry.points, entry.points, member_id],
                ).rowcount
                if moved != 1:  # erased meanwhile (another worker): nothing is posted
                    raise NotFound("member", member_id)
                signed = entry
            entry_id = _insert_entry(store, member_id, signed, source, now)
            insert_audit(
                store,
                who,
                f"member.{entry.kind}",
                f"member:{member_id}",
                at,
                detail={"points": entry.points, "entry": entry_id},
            )
            return Posted(_member(store, member_id), True, entry_id)
    except Error as exc:
        raise StoreError(f"cannot post {entry.kind} for {member_id!r}: {exc}") from exc


def set_rule(store: Session, campaign_id: str, per_conversion: int, who: str, at: datetime) -> None:
    """The points an attributed conversion of `campaign_id` credits (0: none)."""
    try:
        with store.transaction():
            store.conn.execute(
                "INSERT INTO member_rules (campaign_id, per_conversion, updated_at)"
                " VALUES (?, ?, ?) ON CONFLICT (campaign_id) DO UPDATE SET"
                " per_conversion = excluded.per_conversion, updated_at = excluded.updated_at",
                [campaign_id, per_conversion, format_time(at)],
            )
            insert_audit(
                store,
                who,
                "member.rule",
                f"campaign:{campaign_id}",
                at,
                detail={"per_conversion": per_conversion},
            )
    except Error as exc:
        raise StoreError(f"cannot set the points rule of {campaign_id!r}: {exc}") from exc


def credit_conversions(store: Session, items: Sequence[tuple[str, Outcome]], now: str) -> list[str]:
    """Inside the caller's transaction (the batch's): credit each attributed conversion of a
    device owned by a member, as its campaign's rule says, once per (device, outcome id).
    Answers the members credited (their statuses are to send)."""
    conversions = [(d, o) for d, o in items if o.kind == "conversion" and o.campaign_id]
    if not conversions:
        return []
    credited: list[str] = []
    rules: dict[str, int] = {}
    owners: dict[str, str | None] = {}
    for device_id, outcome in conversions:
        campaign_id = outcome.campaign_id
        if campaign_id not in rules:
            row = store.one(
                "SELECT per_conversion FROM member_rules WHERE campaign_id = ?", [campaign_id]
            )
            rules[campaign_id] = int(row["per_conversion"]) if row is not None else 0
        if device_id not in owners:
            row = store.one("SELECT member_id FROM member_devices WHERE device_id = ?", [device_id])
            owners[device_id] = str(row["member_id"]) if row is not None else None
        points, member_id = rules[campaign_id], owners[device_id]
        if points <= 0 or member_id is None:
            continue
        entry = Entry(EARNING[0], points, f"conversion:{device_id}:{outcome.id}", campaign_id)
        source = source_hash(entry.source)
        if not _take_source(store, source, now):
            continue
        moved = store.conn.execute(
            "UPDATE members SET balance = balance + ?, earned = earned + ?,"
            " version = version + 1 WHERE id = ?",
            [points, points, member_id],
        ).rowcount
        if moved != 1:  # the member was erased meanwhile: no entry without its balance
            continue
        _insert_entry(store, member_id, entry, source, now)
        credited.append(member_id)
    return sorted(set(credited))


def device_status(store: Session, device_id: str) -> dict[str, Any] | None:
    """The member owning the device (balance, earned, version), or None."""
    return store.one(
        "SELECT m.id, m.balance, m.earned, m.version FROM member_devices d"
        " JOIN members m ON m.id = d.member_id WHERE d.device_id = ?",
        [device_id],
    )


def _fold(store: Session, member_id: str) -> int:
    """Fold the member's entries into the anonymous totals and delete them; the count."""
    rows = store.rows(
        "SELECT kind, count(*) AS n, sum(points) AS p FROM member_ledger WHERE member_id = ?"
        " GROUP BY kind",
        [member_id],
    )
    for r in rows:
        store.conn.execute(
            "INSERT INTO member_ledger_erased (kind, entries, points) VALUES (?, ?, ?)"
            " ON CONFLICT (kind) DO UPDATE SET entries = member_ledger_erased.entries"
            " + excluded.entries, points = member_ledger_erased.points + excluded.points",
            [r["kind"], int(r["n"]), int(r["p"])],
        )
    return max(
        store.conn.execute("DELETE FROM member_ledger WHERE member_id = ?", [member_id]).rowcount,
        0,
    )


def erase_member(store: Session, member_id: str, who: str, at: datetime) -> dict[str, Any]:
    """Remove the person: the member, its device links, its entries (folded into the
    anonymous totals, so every total stays exact). Answers what was removed and the devices
    whose statuses are to clear."""
    try:
        with store.transaction():
            devices = _member(store, member_id)["devices"]
            entries = _fold(store, member_id)
            store.conn.execute("DELETE FROM member_devices WHERE member_id = ?", [member_id])
            store.conn.execute("DELETE FROM members WHERE id = ?", [member_id])
            insert_audit(
                store, who, "member.erase", f"member:{member_id}", at, detail={"entries": entries}
            )
            return {"member_id": member_id, "entries_folded": entries, "devices": devices}
    except Error as exc:
        raise StoreError(f"cannot erase member {member_id!r}: {exc}") from exc


def unlink_erased_device(store: Session, device_id: str) -> int:
    """Inside a device erasure's transaction: the device no longer belongs to a member (the
    member and its ledger stay: the person may own other devices)."""
    row = store.one("SELECT member_id FROM member_devices WHERE device_id = ?", [device_id])
    if row is None:
        return 0
    store.conn.execute("DELETE FROM member_devices WHERE device_id = ?", [device_id])
    _bump(store, str(row["member_id"]))
    return 1


def ledger_totals(store: Session) -> dict[str, int]:
    """Points issued and spent over the whole ledger, the erased members' included, and the
    balances held: `issued - spent == held + erased balance` always."""
    live = (
        store.one(
            "SELECT coalesce(sum(CASE WHEN points > 0 THEN points ELSE 0 END), 0) AS issued,"
            " coalesce(sum(CASE WHEN points < 0 THEN -points ELSE 0 END), 0) AS spent,"
            " count(*) AS entries FROM member_ledger"
        )
        or {}
    )
    gone = (
        store.one(
            "SELECT coalesce(sum(CASE WHEN points > 0 THEN points ELSE 0 END), 0) AS issued,"
            " coalesce(sum(CASE WHEN points < 0 THEN -points ELSE 0 END), 0) AS spent,"
            " coalesce(sum(entries), 0) AS entries FROM member_ledger_erased"
        )
        or {}
    )
    held = store.one("SELECT coalesce(sum(balance), 0) AS held FROM members") or {}
    return {
        "issued": int(live.get("issued", 0)) + int(gone.get("issued", 0)),
        "spent": int(live.get("spent", 0)) + int(gone.get("spent", 0)),
        "entries": int(live.get("entries", 0)) + int(gone.get("entries", 0)),
        "held": int(held.get("held", 0)),
        "erased_balance": int(gone.get("issued", 0)) - int(gone.get("spent", 0)),
    }


def tiers(store: Session) -> list[TierFigures]:
    """Per tier: members, points issued and spent (`members.ledger.tier_figures`); the
    erased members' totals under `erased`."""
    members = store.rows("SELECT earned, spent FROM members")
    gone = (
        store.one(
            "SELECT coalesce(sum(CASE WHEN points > 0 THEN points ELSE 0 END), 0) AS issued,"
            " coalesce(sum(CASE WHEN points < 0 THEN -points ELSE 0 END), 0) AS spent"
            " FROM member_ledger_erased"
        )
        or {}
    )
    return tier_figures(
        [(int(m["earned"]), int(m["spent"])) for m in members],
        (int(gone.get("issued", 0)), int(gone.get("spent", 0))),
    )


def entries(store: Session, member_id: str, limit: int = 200) -> list[dict[str, Any]]:
    _member(store, member_id)
    return store.rows(
        "SELECT id, kind, points, campaign_id, at FROM member_ledger WHERE member_id = ?"
        " ORDER BY at DESC, id DESC LIMIT ?",
        [member_id, limit],
    )
