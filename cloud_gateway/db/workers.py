"""SQL of the worker registry: each gateway process's heartbeat row (`gateway_workers`), the
live ones, and the fleet-wide figures any worker can read from the shared database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cloud_gateway.db.backend import Error, Session
from cloud_gateway.db.rows import to_text
from cloud_gateway.errors import StoreError
from protocol.ids import format_time

HEARTBEAT_S = 3.0
"""How often a worker refreshes its row."""
LIVE_WITHIN_S = 3 * HEARTBEAT_S
"""A worker is live while seen within three heartbeats."""


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """What a worker says of itself at each heartbeat."""

    id: str
    host: str
    pid: int
    started_at: float
    http_port: int | None
    version: str
    leases: tuple[str, ...]


def heartbeat(store: Session, worker: WorkerRow) -> None:
    """Insert or refresh `worker`'s row, seen now (the store's clock)."""
    now = store.clock().timestamp()
    try:
        _upsert(store, worker, now)
    except Error as exc:
        raise StoreError(f"heartbeat of worker {worker.id}: {exc}") from exc


def _upsert(store: Session, worker: WorkerRow, now: float) -> None:
    with store.transaction():
        store.conn.execute(
            "INSERT INTO gateway_workers (id, host, pid, started_at, last_seen, http_port,"
            " version, leases) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " last_seen = excluded.last_seen, http_port = excluded.http_port,"
            " leases = excluded.leases",
            [
                worker.id,
                worker.host,
                worker.pid,
                worker.started_at,
                now,
                worker.http_port,
                worker.version,
                to_text(list(worker.leases)),
            ],
        )


def deregister(store: Session, worker_id: str) -> None:
    with store.transaction():
        store.conn.execute("DELETE FROM gateway_workers WHERE id = ?", [worker_id])


def live_workers(store: Session, within_s: float = LIVE_WITHIN_S) -> list[dict[str, Any]]:
    """The workers seen in the last `within_s` seconds, oldest first, times as ISO text."""
    now = store.clock().timestamp()
    rows = store.rows(
        "SELECT id, host, pid, started_at, last_seen, http_port, version, leases"
        " FROM gateway_workers WHERE last_seen >= ? ORDER BY started_at, id",
        [now - within_s],
    )
    for row in rows:
        row["leases"] = json.loads(row["leases"])
        for key in ("started_at", "last_seen"):
            row[key] = format_time(datetime.fromtimestamp(float(row[key]), UTC))
    return rows


def fleet_figures(store: Session) -> dict[str, int]:
    """Fleet-wide figures from the database (every worker's work): devices known, batches
    stored in the last hour, device pushes and commands set aside (quarantined) for good."""
    hour_ago = format_time(store.clock() - timedelta(hours=1))
    devices = store.one("SELECT count(*) AS n FROM devices")
    batches = store.one("SELECT count(*) AS n FROM batches WHERE received_at >= ?", [hour_ago])
    pushes = store.one("SELECT count(*) AS n FROM device_pushes WHERE quarantined IS NOT NULL")
    commands = store.one("SELECT count(*) AS n FROM device_commands WHERE quarantined IS NOT NULL")
    return {
        "fleet_devices": int(devices["n"]) if devices else 0,
        "fleet_batches_last_hour": int(batches["n"]) if batches else 0,
        "quarantined_pushes": int(pushes["n"]) if pushes else 0,
        "quarantined_commands": int(commands["n"]) if commands else 0,
    }
