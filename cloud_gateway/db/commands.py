"""SQL of erasure and device commands: a device's data deleted in one transaction with the
signed `forget` command it is owed, commands re-sent until their receipt.

Plain functions over a session, run on the store thread: `await db.call(erase_device, ...)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Error, Session
from cloud_gateway.db.members import unlink_erased_device
from cloud_gateway.db.social import SOCIAL_KEPT, anonymise_social
from cloud_gateway.errors import StoreError
from protocol.ids import format_time

PERIODIC_SENDS_MAX = 5
"""Periodic re-sends of an unconfirmed command stop after this many sends: a device that
stays away gets it again at its next birth (and from its persistent session), so a device
gone for good does not fill the broker's queue for it."""
DATA_TABLES = (
    "signals",
    "aggregates",
    "outcomes",
    "outcome_features",
    "batches",
    "claims",
    "model_health",
    "campaign_explanations",
    "social_requests",
    "social_pushes",
)
"""Tables of what a device reported: emptied on erasure and again on its confirmation."""
HANDLED_ELSEWHERE = (
    "devices",
    "device_pushes",
    "grants",
    "device_commands",
    "device_certs",
    "device_passwords",
    "household_members",
    "member_devices",
    *SOCIAL_KEPT,
)
"""Device-keyed tables `erase_device` treats apart: the registry row and pushes are deleted,
grants anonymised (stock stays right), the forget command itself kept until confirmed, the
device's certificate, broker password and household membership kept (erasure is of data, not
of the device's identity: revoke that with `edgemart gateway provision revoke` / `password
--revoke`; a membership lapses at its expiry), the device's link to its member deleted (the
member and its ledger stay: `DELETE /v1/members/{id}` erases the person, issue 19)."""


def _delete_data(store: Session, device_id: str) -> dict[str, int]:
    return {
        table: max(
            store.conn.execute(f"DELETE FROM {table} WHERE device_id = ?", [device_id]).rowcount,  # noqa: S608 - fixed table names
            0,
        )
        for table in DATA_TABLES
    }


def erase_device(
    store: Session, device_id: str, command: dict[str, Any], who: str, at: datetime
) -> dict[str, int] | None:
    """Delete all the gateway holds for `device_id` and record `command` (signed, wire form)
    and the audit entry, in one transaction. None (nothing changed) when nothing is held."""
    conn = store.conn
    now = format_time(at)
    try:
        with store.transaction():
            removed = _delete_data(store, device_id)
            removed["device_pushes"] = max(
                conn.execute("DELETE FROM device_pushes WHERE device_id = ?", [device_id]).rowcount,
                0,
            )
            removed["grants_anonymized"] = max(
                conn.execute(
                    "UPDATE grants SET device_id = 'erased-' || "  # noqa: S608 - a dialect constant
                    + store.dialect.random_hex16
                    + ", code = '' WHERE device_id = ?",
                    [device_id],
                ).rowcount,
                0,
            )
            removed["member_link"] = unlink_erased_device(store, device_id)
            removed["social_anonymized"] = anonymise_social(store, device_id)
            removed["registry"] = max(
                conn.execute("DELETE FROM devices WHERE device_id = ?", [device_id]).rowcount, 0
            )
            if not any(removed.values()):
                return None  # nothing held: the empty transaction commits nothing
            conn.execute(
                "INSERT INTO device_commands (id, device_id, kind, payload, created_at,"
                " expires_at, requested_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    command["id"],
                    device_id,
                    command["kind"],
                    json.dumps(command, separators=(",", ":"), ensure_ascii=False),
                    now,
                    command["expires_at"],
                    who,
                ],
            )
            insert_audit(
                store,
                who,
                "device.erase",
                device_id,
                at,
                detail={"removed": removed, "command_id": command["id"]},
            )
    except Error as exc:
        raise StoreError(f"cannot erase device {device_id}: {exc}") from exc
    return removed


def outstanding_commands(
    store: Session, device_id: str | None = None, sent_before: datetime | None = None
) -> list[dict[str, Any]]:
    """Commands without a receipt: all of one device (its birth), or those last sent before
    `sent_before` and sent fewer than `PERIODIC_SENDS_MAX` times (the periodic re-send)."""
    sql = (
        "SELECT id, device_id, kind, payload, expires_at FROM device_commands"
        " WHERE receipt_at IS NULL AND quarantined IS NULL"
    )
    params: list[Any] = []
    if device_id is not None:
        sql += " AND device_id = ?"
        params.append(device_id)
    if sent_before is not None:
        sql += " AND (sent_at IS NULL OR sent_at < ?) AND sends < ?"
        params += [format_time(sent_before), PERIODIC_SENDS_MAX]
    sql += " ORDER BY created_at, id LIMIT 10000"
    return store.rows(sql, params)


def quarantine_command(store: Session, command_id: str, reason: str) -> None:
    """Set a command aside: kept (export, `quarantined_rows`), never sent again."""
    with store.transaction():
        store.conn.execute(
            "UPDATE device_commands SET quarantined = ? WHERE id = ?", [reason[:500], command_id]
        )


def replace_payload(store: Session, command_id: str, payload: dict[str, Any]) -> None:
    """A re-signed command (same id, later expiry)."""
    with store.transaction():
        store.conn.execute(
            "UPDATE device_commands SET payload = ?, expires_at = ? WHERE id = ?",
            [json.dumps(payload, separators=(",", ":")), payload["expires_at"], command_id],
        )


def mark_commands_sent(store: Session, ids: Sequence[str], at: datetime) -> None:
    with store.transaction():
        store.conn.executemany(
            "UPDATE device_commands SET sent_at = ?, sends = sends + 1 WHERE id = ?",
            [(format_time(at), i) for i in ids],
        )


def confirm_commands(
    store: Session, device_id: str, ids: Sequence[str], at: datetime
) -> dict[str, int]:
    """The device confirmed these commands. A confirmed `forget` deletes again what the
    device reported before it forgot (batches in flight at the erasure). Returns counts."""
    conn = store.conn
    confirmed = 0
    swept: dict[str, int] = {}
    try:
        with store.transaction():
            for command_id in ids:
                row = conn.execute(
                    "SELECT kind FROM device_commands WHERE id = ? AND device_id = ?"
                    " AND receipt_at IS NULL",
                    [command_id, device_id],
                ).fetchone()
                if row is None:
                    continue
                conn.execute(
                    "UPDATE device_commands SET receipt_at = ? WHERE id = ?",
                    [format_time(at), command_id],
                )
                confirmed += 1
                if row["kind"] == "forget":
                    swept = _delete_data(store, device_id)
    except Error as exc:
        raise StoreError(f"cannot confirm commands of {device_id}: {exc}") from exc
    return {"confirmed": confirmed, "swept": sum(swept.values())}
