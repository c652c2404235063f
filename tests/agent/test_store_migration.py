"""The decision tables' rename (`m007_decision_table_names`) keeps the rows a database written
by the previous schema holds."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from agent.store import schema
from agent.store.core import Store


def agent_db_before(path: Path, migration: schema.Migration, sql: list[str]) -> None:
    """An agent database as the release before `migration` left it, then `sql` run on it."""
    names = [fn for _, fn in schema.MIGRATIONS]
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        for name, fn in schema.MIGRATIONS[: names.index(migration)]:
            fn(db)
            db.execute("INSERT INTO migrations(name, applied_at) VALUES (?, 0)", (name,))
        for statement in sql:
            db.execute(statement)


async def test_rename_keeps_cap_counts_exposures_and_claims(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite3"
    await asyncio.to_thread(
        agent_db_before,
        path,
        schema.m007_decision_table_names,
        [
            "INSERT INTO issue4_cap_counts VALUES ('offer', 'o-1', 740000, 3)",
            "INSERT INTO issue4_exposures(outcome_id, campaign_id, offer_id, variant, kind, at,"
            " surface) VALUES ('x-1', 'c-1', 'o-1', 'A', 'click', 100.0, 'home')",
            "INSERT INTO issue4_claims(id, offer_id, campaign_id, state, created, updated)"
            " VALUES ('k-1', 'o-1', 'c-1', 'granted', 1.0, 2.0)",
        ],
    )
    store = Store(path, clock=lambda: 150.0)
    await store.open()
    try:
        assert await store.call(store.decisions.cap_counts, 740000) == [("offer", "o-1", 740000, 3)]
        exposure = await store.call(store.decisions.latest_exposure, "c-1", "click", 50.0)
        assert exposure is not None and exposure["outcome_id"] == "x-1"
        claim = await store.call(store.claims.get, "k-1")
        assert claim is not None and claim["state"] == "granted"
        listed = await store.call(
            lambda: (
                store.thread.conn()
                .execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
                .fetchall()
            )
        )
        tables = {str(name) for (name,) in listed}
        assert not {t for t in tables if t.startswith("issue4_")}
        assert "exposures_campaign" in tables
    finally:
        await store.close()
