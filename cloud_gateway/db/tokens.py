"""SQL of operator tokens: only their sha256 is stored, with the audit row of their creation."""

from __future__ import annotations

from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Error, Session
from cloud_gateway.errors import StoreError
from protocol.ids import format_time


def add_token(store: Session, token_id: str, digest: str, who: str) -> None:
    """A new token (its hash) and the audit row naming who created it, in one transaction."""
    now = store.clock()
    try:
        with store.transaction():
            store.conn.execute(
                "INSERT INTO tokens (id, hash, created_at) VALUES (?, ?, ?)",
                [token_id, digest, format_time(now)],
            )
            insert_audit(store, who, "token.create", f"token:{token_id}", now)
    except Error as exc:
        raise StoreError(f"cannot store the new token: {exc}") from exc


def token_id_for_hash(store: Session, digest: str) -> str | None:
    """The id of the live (unrevoked) token with this hash, or None."""
    row = store.one("SELECT id FROM tokens WHERE hash = ? AND revoked_at IS NULL", [digest])
    return str(row["id"]) if row else None
