"""The store seam on both backends: the shared SQL translated for psycopg, migrations applied
once by workers starting together on PostgreSQL, the database chosen by `--db`, and one
SQLite file refused to a second gateway process."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cloud_gateway.cli import main
from cloud_gateway.config import load_settings
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.pg_migrations import MIGRATIONS
from cloud_gateway.db.postgres import PostgresStore, translate
from cloud_gateway.errors import ConfigError, StoreError
from simulators.brokers import MosquittoProcess, free_port
from tests.support.processes import spawn, start_gateway, stop, tail


def test_the_shared_sql_is_translated_for_psycopg_outside_quotes_only() -> None:
    sql = "SELECT \"window\" FROM t WHERE k LIKE 'a/%' AND x = ? AND y::text = :name AND '?:z'"
    assert translate(sql) == (
        "SELECT \"window\" FROM t WHERE k LIKE 'a/%%' AND x = %s AND y::text = %(name)s AND '?:z'"
    )


async def test_a_backend_is_writable_and_records_its_migrations(
    make_backend: Callable[[], Backend[Session]],
) -> None:
    db = await make_backend().open()
    try:
        await db.check_writable()
        assert db.applied_migrations()
        assert "readyz-probe" not in db.applied_migrations()  # the probe was rolled back
    finally:
        await db.close()


def test_workers_starting_together_apply_each_postgresql_migration_once(
    postgres_url: str,
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # a database never migrated
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    applied: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        try:
            store = PostgresStore(postgres_url)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
            return
        applied.append(store.applied)
        store.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    names = [name for done in applied for name in done]
    assert sorted(names) == sorted(name for name, _ in MIGRATIONS)  # each applied once


def test_db_names_sqlite_or_postgresql_and_anything_else_is_refused(tmp_path: Path) -> None:
    plain = load_settings(data_dir=tmp_path)
    assert (plain.db_path, plain.db_url) == (tmp_path / "gateway.db", None)
    assert load_settings(data_dir=tmp_path, db="sqlite:///x/g.db").db_path == Path("/x/g.db")
    assert load_settings(data_dir=tmp_path, db="/x/g.db").db_path == Path("/x/g.db")
    url = "postgresql://gw@127.0.0.1:5433/edgemart"
    assert load_settings(data_dir=tmp_path, db=url).db_url == url
    with pytest.raises(ConfigError, match=r"database 'mysql://h/db'") as err:
        load_settings(data_dir=tmp_path, db="mysql://h/db")
    assert err.value.field == "db"


def test_the_cli_names_the_flag_and_the_value_it_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEMART_DB", "redis://h:1")
    code = main(["token", "create", "--data-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "'redis://h:1'" in err and "in EDGEMART_DB" in err
    # a value from the flag is reported as the flag's, even with the variable set
    code = main(["token", "create", "--data-dir", str(tmp_path), "--db", "mysql://h/db"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'mysql://h/db'" in err and "in --db" in err and "EDGEMART_DB" not in err


def test_a_token_created_with_db_works_on_that_database(postgres_url: str, tmp_path: Path) -> None:
    assert main(["token", "create", "--data-dir", str(tmp_path), "--db", postgres_url]) == 0
    store = PostgresStore(postgres_url)
    try:
        assert store.one("SELECT count(*) AS n FROM tokens") == {"n": 1}
    finally:
        store.close()
    assert not (tmp_path / "gateway.db").exists()


@pytest.mark.integration
async def test_a_second_gateway_process_on_one_sqlite_file_is_refused(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    data = tmp_path / "gw"
    first = await start_gateway(mosquitto.url, data, free_port(), tmp_path / "gw1.log")
    try:
        log = tmp_path / "gw2.log"
        second = spawn(
            [
                *("gateway", "run", "--broker", mosquitto.url, "--data-dir", str(data)),
                *("--http-port", str(free_port())),
            ],
            log,
        )
        try:
            code = second.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop(second)
            raise AssertionError(f"the second gateway ran:\n{tail(log)}") from None
        assert code == 2, tail(log)
        assert "in use by another gateway process" in tail(log)
        assert "one SQLite file serves one worker" in tail(log)
        assert first.poll() is None  # the first one is untouched
    finally:
        assert stop(first) == 0
    # Once the first has gone, the file is free again.
    again = await start_gateway(mosquitto.url, data, free_port(), tmp_path / "gw3.log")
    assert stop(again) == 0


def test_the_lock_is_refused_in_process_too(tmp_path: Path) -> None:
    from cloud_gateway.db.store import Store  # noqa: PLC0415 - the SQLite session itself

    first = Store(tmp_path / "g.db", worker=True)
    try:
        with pytest.raises(StoreError, match="one SQLite file serves one worker"):
            Store(tmp_path / "g.db", worker=True)
        Store(tmp_path / "g.db").close()  # a CLI beside the worker is not refused
    finally:
        first.close()
    Store(tmp_path / "g.db", worker=True).close()
