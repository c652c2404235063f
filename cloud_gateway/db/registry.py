"""SQL of the model registry: registered models, rollouts per profile, device health reports
and halts.

Plain functions over a session, run on the store thread: `await db.call(get_model, 3)`.
"""

from __future__ import annotations

import json
from typing import Any

from cloud_gateway.db.backend import Error, Session
from cloud_gateway.errors import StoreError
from cloud_gateway.registry.checks import Health
from protocol.envelopes import ModelManifest, ModelUpdateReport
from protocol.ids import format_time


def latest_version(store: Session) -> int:
    row = store.conn.execute("SELECT max(version) FROM models").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def insert_model(store: Session, manifest: ModelManifest, who: str) -> None:
    with store.transaction():
        store.conn.execute(
            "INSERT INTO models (version, name, sha256, size, profiles, manifest, registered_at,"
            " registered_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                manifest.version,
                manifest.name,
                manifest.sha256,
                manifest.size,
                json.dumps(manifest.profiles),
                json.dumps(manifest.to_wire(), separators=(",", ":")),
                format_time(store.clock()),
                who,
            ],
        )


def get_model(store: Session, version: int) -> dict[str, Any] | None:
    row = store.conn.execute("SELECT * FROM models WHERE version = ?", [version]).fetchone()
    return dict(row) if row is not None else None


def list_models(store: Session, version: int | None = None) -> list[dict[str, Any]]:
    if version is None:
        models = [dict(r) for r in store.conn.execute("SELECT * FROM models ORDER BY version")]
    else:
        models = [
            dict(r) for r in store.conn.execute("SELECT * FROM models WHERE version = ?", [version])
        ]
    rollouts = [dict(r) for r in store.conn.execute("SELECT * FROM model_rollouts")]
    for model in models:
        model["profiles"] = json.loads(model["profiles"])
        model["manifest"] = json.loads(model["manifest"])
        model["rollouts"] = {
            r["profile"]: {"cohort": r["cohort"], "percent": r["percent"]}
            for r in rollouts
            if r["version"] == model["version"]
        }
        model["health"] = health(store, model["version"]).doc()
        model["halt"] = halt_of(store, model["version"])
    return models


def record_health(store: Session, device_id: str, report: ModelUpdateReport) -> bool:
    """Store a device's report; False when the version is not a registered model."""
    try:
        if get_model(store, report.version) is None:
            return False
        upsert_health(store, device_id, report)
    except Error as exc:
        raise StoreError(f"cannot record model health of {device_id}: {exc}") from exc
    return True


def upsert_health(store: Session, device_id: str, report: ModelUpdateReport) -> None:
    with store.transaction():
        store.conn.execute(
            "INSERT INTO model_health (version, device_id, status, reason, running, at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version, device_id) DO UPDATE SET"
            " status = excluded.status, reason = excluded.reason, running = excluded.running,"
            " at = excluded.at",
            [
                report.version,
                device_id,
                report.status,
                report.reason,
                report.running,
                format_time(report.at or store.clock()),
            ],
        )


def health(store: Session, version: int) -> Health:
    rows = store.conn.execute(
        "SELECT status, count(*) FROM model_health WHERE version = ? GROUP BY status", [version]
    ).fetchall()
    counts = {str(r[0]): int(r[1]) for r in rows}
    return Health(counts.get("applied", 0), counts.get("failed", 0), counts.get("rolled_back", 0))


def halt_of(store: Session, version: int) -> dict[str, Any] | None:
    row = store.conn.execute("SELECT * FROM model_halts WHERE version = ?", [version]).fetchone()
    return dict(row) if row is not None else None


def record_halt(store: Session, version: int, doc: dict[str, Any]) -> None:
    with store.transaction():
        store.conn.execute(
            "INSERT INTO model_halts (version, halted_at, reason, replacement,"
            " failures, reporting) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version) DO UPDATE SET"
            " halted_at = excluded.halted_at, reason = excluded.reason,"
            " replacement = excluded.replacement, failures = excluded.failures,"
            " reporting = excluded.reporting",
            [
                version,
                doc["halted_at"],
                doc["reason"],
                doc["replacement"],
                doc["failures"],
                doc["reporting"],
            ],
        )


def good_before(store: Session, version: int, profile: str) -> dict[str, Any] | None:
    """The newest registered model below `version` built for `profile`, not halted, unexpired."""
    rows = store.conn.execute(
        "SELECT * FROM models WHERE version < ? AND version NOT IN"
        " (SELECT version FROM model_halts) ORDER BY version DESC",
        [version],
    ).fetchall()
    now = store.clock()
    for row in rows:
        manifest = ModelManifest.model_validate(json.loads(row["manifest"]))
        if profile in manifest.profiles and manifest.expires_at > now:
            return dict(row)
    return None


def rollouts_of(store: Session, version: int) -> list[dict[str, Any]]:
    rows = store.conn.execute("SELECT * FROM model_rollouts WHERE version = ?", [version])
    return [dict(r) for r in rows]


def published(store: Session) -> dict[str, int]:
    rows = store.conn.execute("SELECT profile, version FROM model_rollouts").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def record_rollout(
    store: Session, profile: str, version: int, *, cohort: str, percent: int, signed: dict[str, Any]
) -> None:
    with store.transaction():
        store.conn.execute(
            "INSERT INTO model_rollouts (profile, version, cohort, percent, manifest,"
            " published_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (profile) DO UPDATE SET"
            " version = excluded.version, cohort = excluded.cohort,"
            " percent = excluded.percent, manifest = excluded.manifest,"
            " published_at = excluded.published_at",
            [profile, version, cohort, percent, json.dumps(signed), format_time(store.clock())],
        )
