"""Which PostgreSQL driver the gateway's ingest uses, by measurement: the rows of uplink
batches (keyed signals, `ON CONFLICT DO NOTHING`, one transaction per group of batches) written
with psycopg 3 on a thread (the gateway's store-thread idiom) and with asyncpg on the loop.

A private PostgreSQL (`simulators.postgres`, durable settings: fsync on) is started for the run.
Figures (rows/s; baseline measured in the same run):
- `pg_driver_psycopg_rows_per_s`: psycopg `executemany` (pipelined) vs asyncpg `executemany`.
- `pg_driver_psycopg_copy_rows_per_s`: psycopg COPY into a temporary table, then one
  `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, vs asyncpg's `copy_records_to_table` the same way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import asyncpg
import psycopg

from bench.record import Record
from simulators.postgres import PostgresProcess

GROUP_BATCHES = 50  # batches a group commit holds
SIGNALS = 20  # signals a batch carries
ROUNDS = 20
ROWS = GROUP_BATCHES * SIGNALS

DDL = """
DROP TABLE IF EXISTS signals;
CREATE TABLE signals (
    device_id text NOT NULL, id text NOT NULL, seq bigint NOT NULL, kind text NOT NULL,
    at text NOT NULL, attrs text NOT NULL, PRIMARY KEY (device_id, id)
);
"""
INSERT = (
    "INSERT INTO signals (device_id, id, seq, kind, at, attrs) VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)
TEMP = "CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE signals) ON COMMIT DELETE ROWS"
ATTRS = json.dumps({"category": "tv_streaming", "genre": "drama", "seconds": 1800})


def groups(tag: str) -> Iterator[list[tuple[str, str, int, str, str, str]]]:
    for g in range(ROUNDS):
        rows = []
        for b in range(GROUP_BATCHES):
            device = f"{tag}-dev-{g:03d}-{b:03d}"
            rows += [
                (device, f"s{i:04d}", b, "content_view", "2026-12-06T00:00:00Z", ATTRS)
                for i in range(SIGNALS)
            ]
        yield rows


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return ROUNDS * ROWS / (time.perf_counter() - start)


def psycopg_executemany(url: str) -> float:
    with psycopg.connect(url) as conn:
        conn.execute(DDL)
        conn.commit()

        def work() -> None:
            for rows in groups("pe"):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(INSERT, rows)

        return timed(work)


def psycopg_copy(url: str) -> float:
    with psycopg.connect(url) as conn:
        conn.execute(DDL)
        conn.commit()

        def work() -> None:
            for rows in groups("pc"):
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(TEMP)
                    with cur.copy("COPY incoming FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    cur.execute("INSERT INTO signals SELECT * FROM incoming ON CONFLICT DO NOTHING")

        return timed(work)


async def _asyncpg(url: str, copy: bool) -> float:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(DDL)
        insert = INSERT.replace("%s", "{}").format(*(f"${i}" for i in range(1, 7)))
        start = time.perf_counter()
        for rows in groups("ac" if copy else "ae"):
            async with conn.transaction():
                if copy:
                    await conn.execute(TEMP)
                    await conn.copy_records_to_table("incoming", records=rows)
                    await conn.execute(
                        "INSERT INTO signals SELECT * FROM incoming ON CONFLICT DO NOTHING"
                    )
                else:
                    await conn.executemany(insert, rows)
        return ROUNDS * ROWS / (time.perf_counter() - start)
    finally:
        await conn.close()


def run() -> list[Record]:
    pg = PostgresProcess(fast=False)
    pg.start()
    try:
        # Alternate the drivers so a noisy neighbour hits both; best of three each.
        pe, ae, pc, ac = [], [], [], []
        for _ in range(3):
            pe.append(psycopg_executemany(pg.url))
            ae.append(asyncio.run(_asyncpg(pg.url, copy=False)))
            pc.append(psycopg_copy(pg.url))
            ac.append(asyncio.run(_asyncpg(pg.url, copy=True)))
    finally:
        pg.remove()
    note = (
        f"{GROUP_BATCHES} batches x {SIGNALS} signals a transaction, keyed, ON CONFLICT DO"
        " NOTHING, private PostgreSQL with fsync on; best of 3, drivers alternated"
    )
    return [
        Record(
            "pg_driver_psycopg_rows_per_s",
            max(pe),
            "rows/s",
            "asyncpg executemany",
            max(ae),
            note,
        ),
        Record(
            "pg_driver_psycopg_copy_rows_per_s",
            max(pc),
            "rows/s",
            "asyncpg copy_records_to_table",
            max(ac),
            note,
        ),
    ]
