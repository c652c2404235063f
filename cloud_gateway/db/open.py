"""Which backend a gateway runs on, chosen once by its settings' `db`: none, a SQLite file in
the data directory (the embedded default); a path, that SQLite file; `postgresql://...`,
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from cloud_gateway.config import GatewaySettings, sqlite_path
from cloud_gateway.db.backend import Backend, Clock, Session
from cloud_gateway.db.postgres import PostgresDatabase, PostgresStore
from cloud_gateway.db.store import Database, Store
from protocol.ids import utcnow

DB_NAME = "gateway.db"


def open_backend(settings: GatewaySettings, clock: Clock = utcnow) -> Backend[Session]:
    """The gateway worker's backend, not yet opened (`await backend.open()`). On SQLite the
    worker holds the file alone: a second gateway process on it is refused at `open()`."""
    if settings.db_url is not None:
        return PostgresDatabase(settings.db_url, clock=clock)
    return Database(settings.db_path, clock=clock, worker=True)


def open_session(data_dir: Path, db: str | None = None, clock: Clock = utcnow) -> Session:
    """A session on the calling thread, for CLIs beside a running gateway (blocking)."""
    path = sqlite_path(db) if db is not None else data_dir / DB_NAME
    if path is None and db is not None:
        return PostgresStore(db, clock=clock)
    return Store(path or data_dir / DB_NAME, clock=clock)
