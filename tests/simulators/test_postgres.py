"""The private PostgreSQL the gateway's tests and fleets stand on: started from nothing on a
free loopback port, SIGKILLed and started again with what it committed."""

from __future__ import annotations

import psycopg
import pytest

from simulators.postgres import PostgresProcess

pytestmark = pytest.mark.integration


def test_a_private_server_starts_survives_sigkill_and_keeps_committed_rows() -> None:
    pg = PostgresProcess()
    try:
        pg.start()
        assert pg.port != 5432
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (k int PRIMARY KEY)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
            (user,) = conn.execute("SELECT current_user").fetchone() or ("",)
            assert user == "edgemart"
        pg.kill()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url, connect_timeout=2)
        pg.start()
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    finally:
        pg.remove()
    assert not pg.base.exists()
