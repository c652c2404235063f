"""SQL of operator tokens: only their sha256 is stored, with scopes, expiry, revocation, and
the audit row of each change in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Error, Session
from cloud_gateway.errors import StoreError
from protocol.ids import format_time, parse_time


@dataclass(frozen=True, slots=True)
class TokenRow:
    """What the gateway knows of a live token: its id, scopes and end of life."""

    id: str
    scopes: frozenset[str]
    expires_at: datetime | None


def add_token(
    store: Session,
    token_id: str,
    digest: str,
    who: str,
    *,
    scopes: tuple[str, ...] = ("admin",),
    expires_at: datetime | None = None,
    name: str | None = None,
) -> None:
    """A new token (its hash) and the audit row naming who created it, in one transaction."""
    now = store.clock()
    try:
        with store.transaction():
            store.conn.execute(
                "INSERT INTO tokens (id, hash, created_at, scopes, expires_at, name)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    token_id,
                    digest,
                    format_time(now),
                    ",".join(scopes),
                    format_time(expires_at) if expires_at else None,
                    name,
                ],
            )
            detail: dict[str, Any] = {"scopes": list(scopes), "name": name}
            if expires_at is not None:
                detail["expires_at"] = format_time(expires_at)
            insert_audit(store, who, "token.create", f"token:{token_id}", now, detail=detail)
    except Error as exc:
        raise StoreError(f"cannot store the new token: {exc}") from exc


def revoke(store: Session, token_id: str, who: str) -> bool:
    """Revoke the live token `token_id` (and audit it); False when there is none."""
    now = store.clock()
    try:
        with store.transaction():
            row = store.one("SELECT id FROM tokens WHERE id = ? AND revoked_at IS NULL", [token_id])
            if row is None:
                return False
            store.conn.execute(
                "UPDATE tokens SET revoked_at = ?, revoked_by = ? WHERE id = ?",
                [format_time(now), who, token_id],
            )
            insert_audit(store, who, "token.revoke", f"token:{token_id}", now)
    except Error as exc:
        raise StoreError(f"cannot revoke the token: {exc}") from exc
    return True


def token_for_hash(store: Session, digest: str) -> TokenRow | None:
    """The live (unrevoked) token with this hash, or None (expiry is the caller's check)."""
    row = store.one(
        "SELECT id, scopes, expires_at FROM tokens WHERE hash = ? AND revoked_at IS NULL",
        [digest],
    )
    if row is None:
        return None
    expires = row["expires_at"]
    return TokenRow(
        str(row["id"]),
        frozenset(str(row["scopes"] or "").split(",")) - {""},
        parse_time(str(expires)) if expires else None,
    )


def token_id_for_hash(store: Session, digest: str) -> str | None:
    """The id of the live (unrevoked, unexpired) token with this hash, or None."""
    found = token_for_hash(store, digest)
    if found is None or (found.expires_at is not None and found.expires_at <= store.clock()):
        return None
    return found.id


def list_tokens(store: Session) -> list[dict[str, Any]]:
    """Every token (never a hash): id, name, scopes, created, expires, revoked."""
    return store.rows(
        "SELECT id, name, scopes, created_at, expires_at, revoked_at, revoked_by FROM tokens"
        " ORDER BY created_at, id"
    )
