"""SQL of the operators' policies (issue 18): one row per scope and name, the version counter
of the signed documents, and which policy version devices report running."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Error, Session
from protocol.ids import format_time


def put_policy(
    store: Session, scope: str, name: str, rules: dict[str, Any], *, who: str, at: datetime
) -> None:
    """Create or replace one policy, audited in the same transaction."""
    now = format_time(at)
    text = json.dumps(rules, sort_keys=True, separators=(",", ":"))
    with store.transaction():
        store.conn.execute(
            "INSERT INTO policies (scope, name, rules, updated_at, updated_by)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, name) DO UPDATE SET"
            " rules = excluded.rules, updated_at = excluded.updated_at,"
            " updated_by = excluded.updated_by",
            [scope, name, text, now, who],
        )
        insert_audit(store, who, "policy.put", f"{scope}/{name}", at, detail=rules)


def delete_policy(store: Session, scope: str, name: str, who: str, at: datetime) -> bool:
    """Remove one policy (audited); False when there was none."""
    with store.transaction():
        gone = store.conn.execute(
            "DELETE FROM policies WHERE scope = ? AND name = ?", [scope, name]
        ).rowcount
        if gone:
            insert_audit(store, who, "policy.delete", f"{scope}/{name}", at)
    return bool(gone)


def list_policies(store: Session) -> list[dict[str, Any]]:
    """Every policy: scope, name, rules (parsed), updated_at, updated_by."""
    rows = store.rows(
        "SELECT scope, name, rules, updated_at, updated_by FROM policies ORDER BY scope, name"
    )
    return [{**r, "rules": json.loads(r["rules"])} for r in rows]


TAKE_VERSION_TRIES = 5


def next_version(store: Session, cohorts: list[str], at: datetime) -> int:
    """Take the next document version (one counter for every cohort) and record which
    cohorts it is published to. Two workers cannot take the same (primary key): the one
    that loses the race takes the next."""
    for attempt in range(TAKE_VERSION_TRIES):
        try:
            with store.transaction():
                row = store.one("SELECT max(version) AS v FROM policy_versions")
                version = int(row["v"] or 0) + 1 if row else 1
                store.conn.execute(
                    "INSERT INTO policy_versions (version, published_at, cohorts) VALUES (?, ?, ?)",
                    [version, format_time(at), json.dumps(sorted(cohorts))],
                )
        except Error:
            if attempt == TAKE_VERSION_TRIES - 1:
                raise
            continue
        return version
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def last_publication(store: Session) -> dict[str, Any] | None:
    """The newest version taken: `version`, `published_at`, `cohorts` (parsed)."""
    row = store.one(
        "SELECT version, published_at, cohorts FROM policy_versions ORDER BY version DESC LIMIT 1"
    )
    if row is None:
        return None
    return {**row, "version": int(row["version"]), "cohorts": json.loads(row["cohorts"])}


def devices_by_policy_version(store: Session) -> dict[int, int]:
    """How many registered devices report each policy version (0: none reported)."""
    rows = store.rows(
        "SELECT coalesce(policy_version, 0) AS v, count(*) AS n FROM devices"
        " GROUP BY coalesce(policy_version, 0) ORDER BY 1"
    )
    return {int(r["v"]): int(r["n"]) for r in rows}
