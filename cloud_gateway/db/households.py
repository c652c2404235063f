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


def create_invite(
    store: Session,
    household_id: str,
    code_hash: str,
    *,
    roles: list[str],
    expires_at: datetime,
    who: str,
) -> None:
    """Record a one-time household invite (its code's hash only), audited."""
    now = store.clock()
    try:
        with store.transaction():
            store.conn.execute(
                "INSERT INTO household_invites (code_hash, household_id, roles, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                [
                    code_hash,
                    household_id,
                    json.dumps(roles),
                    format_time(now),
                    format_time(expires_at),
                ],
            )
            insert_audit(
                store,
                who,
                "household.invite",
                f"household:{household_id}",
                now,
                detail={"roles": roles, "expires_at": format_time(expires_at)},
            )
    except Error as exc:
        raise StoreError(f"cannot record an invite to {household_id!r}: {exc}") from exc


INVITE_UNKNOWN = "unknown household invite"
INVITE_USED = "household invite already used"
INVITE_EXPIRED = "household invite expired"


def redeem_invite(
    store: Session, code_hash: str, device_id: str, at: datetime
) -> tuple[str, list[str]] | str:
    """Spend an invite for `device_id` at most once: (household id, roles), or the reason it
    is refused (`INVITE_*`). The same device redeeming its own invite again gets it again (a
    provisioning answer lost on the way is asked for once more). `at`: the moment judged."""
    now = format_time(at)
    try:
        with store.transaction():
            row = store.one(
                "UPDATE household_invites SET used_by = ?, used_at = ? WHERE code_hash = ?"
                " AND (used_by IS NULL OR used_by = ?) AND expires_at > ?"
                " RETURNING household_id, roles",
                [device_id, now, code_hash, device_id, now],
            )
            if row is not None:
                return str(row["household_id"]), list(json.loads(str(row["roles"])))
            seen = store.one(
                "SELECT used_by, expires_at FROM household_invites WHERE code_hash = ?",
                [code_hash],
            )
    except Error as exc:
        raise StoreError(f"cannot redeem a household invite: {exc}") from exc
    if seen is None:
        return INVITE_UNKNOWN
    return INVITE_USED if seen["used_by"] is not None else INVITE_EXPIRED
