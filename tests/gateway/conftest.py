"""The gateway's tests on both backends: `gateway_db` is parametrised `sqlite` (the default
file in the data directory) and `postgresql` (a fresh database of one private PostgreSQL
server per test session, made from a migrated template in ~0.1 s and dropped after)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.open import open_session
from cloud_gateway.db.postgres import PostgresDatabase, PostgresStore
from cloud_gateway.db.store import Database
from simulators.postgres import PostgresProcess

TEMPLATE = "gateway_template"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresProcess]:
    """One private PostgreSQL for the session, with a template database already migrated."""
    pg = PostgresProcess()
    try:
        pg.start()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        PostgresStore(_url(pg, TEMPLATE)).close()
        yield pg
    finally:
        pg.remove()


def _url(pg: PostgresProcess, database: str) -> str:
    return pg.url.rsplit("/", 1)[0] + "/" + database


@pytest.fixture
def postgres_url(postgres: PostgresProcess) -> Iterator[str]:
    """A fresh, migrated database of the session's server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield _url(postgres, name)
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway_db(request: pytest.FixtureRequest) -> str | None:
    """The gateway's `db` setting: None (SQLite in the data directory) or a PostgreSQL URL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def open_store(gateway_db: str | None, tmp_path: Path) -> Iterator[Callable[[], Session]]:
    """`open_store()`: a session on this test's database (a SQLite file in tmp_path/gw when
    `gateway_db` is None), on the calling thread; those left open are closed after the test."""
    (tmp_path / "gw").mkdir(exist_ok=True)
    opened: list[Session] = []

    def make() -> Session:
        opened.append(open_session(tmp_path / "gw", gateway_db))
        return opened[-1]

    yield make
    for session in opened:
        session.close()


@pytest.fixture
def make_backend(gateway_db: str | None, tmp_path: Path) -> Callable[[], Backend[Session]]:
    """`make_backend()`: this test's database as a gateway backend, not yet opened."""
    (tmp_path / "gw").mkdir(exist_ok=True)

    def make() -> Backend[Session]:
        if gateway_db is not None:
            return PostgresDatabase(gateway_db)
        return Database(tmp_path / "gw" / "gateway.db")

    return make
