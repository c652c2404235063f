"""Opening the gateway's database: the one place that chooses and opens a backend."""

from __future__ import annotations

from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.backend import Clock
from cloud_gateway.db.store import Database


async def open_backend(settings: GatewaySettings, clock: Clock) -> Database:
    """The gateway's database, opened and migrated (SQLite at `settings.db_path`)."""
    return await Database(settings.db_path, clock=clock).open()
