"""SQL of the audit log: who changed what, when; written in the change's own transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud_gateway.db.backend import Session
from cloud_gateway.db.rows import to_text
from protocol.ids import format_time


def insert_audit(
    store: Session,
    who: str,
    action: str,
    target: str,
    at: datetime,
    *,
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit row, inside the caller's transaction (a change and its audit commit together)."""
    store.conn.execute(
        "INSERT INTO audit (who, action, target, at, detail) VALUES (?, ?, ?, ?, ?)",
        [who, action, target, format_time(at), to_text(detail or {})],
    )


def audit(
    store: Session, who: str, action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    """One audit row in its own transaction, at the store's clock."""
    with store.transaction():
        insert_audit(store, who, action, target, store.clock(), detail=detail)


def import_audit(store: Session, entries: list[dict[str, Any]]) -> int:
    """Record entries made outside the gateway (`edgemart keys ...`, issue 14) that are not in
    the log yet (same who, action, target and time); how many were new."""
    added = 0
    with store.transaction():
        for e in entries:
            found = store.rows(
                "SELECT id FROM audit WHERE who = ? AND action = ? AND target = ? AND at = ?",
                [e["who"], e["action"], e["target"], e["at"]],
            )
            if not found:
                store.conn.execute(
                    "INSERT INTO audit (who, action, target, at, detail) VALUES (?, ?, ?, ?, ?)",
                    [e["who"], e["action"], e["target"], e["at"], to_text(e.get("detail", {}))],
                )
                added += 1
    return added


def audit_log(store: Session, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` entries, newest first."""
    return store.rows("SELECT * FROM audit ORDER BY id DESC LIMIT ?", [limit])
