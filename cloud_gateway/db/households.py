"""SQL of households: each household's secret and the memberships issued, audited with them."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import datetime

from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Error, Session
from cloud_gateway.errors import StoreError
from protocol.ids import format_time


def record_member(
    store: Session,
    household_id: str,
    device_id: str,
    *,
    device_key: str,
    roles: list[str],
    expires_at: datetime,
    who: str,
) -> str:
    """Record (or renew) a membership; the household's secret (made for its first member),
    in one transaction with the audit row."""
    now = store.clock()
    try:
        with store.transaction():
            row = store.one("SELECT secret FROM households WHERE id = ?", [household_id])
            if row is None:
                secret = base64.b64encode(secrets.token_bytes(32)).decode()
                store.conn.execute(
                    "INSERT INTO households (id, secret, created_at) VALUES (?, ?, ?)",
                    [household_id, secret, format_time(now)],
                )
            else:
                secret = str(row["secret"])
            store.conn.execute(
                "DELETE FROM household_members WHERE household_id = ? AND device_id = ?",
                [household_id, device_id],
            )
            store.conn.execute(
                "INSERT INTO household_members (household_id, device_id, device_key, roles,"
                " issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    household_id,
                    device_id,
                    device_key,
                    json.dumps(roles),
                    format_time(now),
                    format_time(expires_at),
                ],
            )
            insert_audit(
                store,
                who,
                "household.member",
                f"household:{household_id}",
                now,
                detail={"device_id": device_id, "roles": roles},
            )
    except Error as exc:
        raise StoreError(f"cannot record member {device_id!r} of {household_id!r}: {exc}") from exc
    return secret


def members(store: Session, household_id: str) -> list[dict[str, object]]:
    """The household's memberships (no secret)."""
    return store.rows(
        "SELECT device_id, device_key, roles, issued_at, expires_at FROM household_members"
        " WHERE household_id = ? ORDER BY device_id",
        [household_id],
    )
