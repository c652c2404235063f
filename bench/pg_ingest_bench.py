"""`gateway_ingest_pg_signals_per_s`: one gateway worker's ingest path on PostgreSQL (the
store function a group commit calls, `db.ingest.store_batches`, with real decoded batches in
groups of the ingestor's `GROUP_MAX`) vs the same signal rows inserted by the raw driver in
groups of the same size (COPY into a temporary table, one `INSERT ... SELECT ... ON CONFLICT
DO NOTHING`, one transaction a group: the fastest way measured in bench/pg_driver_bench.py).

The gateway path writes more than the baseline for the same signals (each batch's row, the
device upsert, the signals' JSON text), so the ratio says what the rest of a batch costs.
A private PostgreSQL (fsync on) is started for the run; each round gets a fresh database.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import psycopg

from bench.record import Record
from cloud_gateway.db.backend import SignalRow
from cloud_gateway.db.ingest import _signal_rows, store_batches
from cloud_gateway.db.postgres import PostgresStore
from cloud_gateway.ingest.service import GROUP_MAX
from protocol.envelopes import Batch, Signal
from protocol.ids import format_time, new_id, utcnow
from simulators.postgres import PostgresProcess

DEVICES, BATCHES, SIGNALS = 20, 25, 200  # 100,000 signals in 500 batches (ingest_bench's)
FLEET = (1000, 2, 10)  # 20,000 signals in 2,000 batches of 10: raw-mode TVs and hubs
ROUNDS = 3


def _batches(devices: int, batches: int, signals: int) -> list[tuple[str, Batch]]:
    now = utcnow()
    out = []
    for seq in range(1, batches + 1):
        for d in range(devices):
            attrs = ({"category": "tv_streaming", "seconds": i} for i in range(signals))
            out.append(
                (
                    f"tv-{d:04d}",
                    Batch(
                        device_id=f"tv-{d:04d}",
                        seq=seq,
                        sent_at=now,
                        agent_version="0.1.0",
                        signals=[
                            Signal(id=new_id(), kind="content_view", at=now, attrs=a) for a in attrs
                        ],
                    ),
                )
            )
    return out


def _groups(items: list[tuple[str, Batch]]) -> list[list[tuple[str, Batch]]]:
    return [items[i : i + GROUP_MAX] for i in range(0, len(items), GROUP_MAX)]


def _fresh(admin: str) -> str:
    name = f"b_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = admin.rsplit("/", 1)[0] + "/" + name
    PostgresStore(url).close()  # migrated: the same tables and keys on both sides
    return url


def gateway_path(url: str, groups: Sequence[Sequence[tuple[str, Batch]]]) -> float:
    store = PostgresStore(url)
    try:
        start = time.perf_counter()
        for group in groups:
            store_batches(store, group, utcnow())
        return time.perf_counter() - start
    finally:
        store.close()


def raw_driver(url: str, groups: Sequence[Sequence[SignalRow]]) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TEMPORARY TABLE raw_in (device_id text, id text, seq bigint, kind text,"
            " at text, attrs text, received_day date) ON COMMIT DELETE ROWS"
        )
        start = time.perf_counter()
        for rows in groups:
            with conn.transaction():
                with conn.cursor().copy("COPY raw_in FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.execute("INSERT INTO signals SELECT * FROM raw_in ON CONFLICT DO NOTHING")
        return time.perf_counter() - start


def _measure(admin: str, shape: tuple[int, int, int]) -> tuple[float, float]:
    """(gateway signals/s, raw driver signals/s), best of ROUNDS, alternated."""
    items = _batches(*shape)
    groups = _groups(items)
    rows = [
        [r for d, b in g for r in _signal_rows(d, b, format_time(utcnow())[:10])] for g in groups
    ]
    total = sum(len(b.signals) for _, b in items)
    gw, raw = [], []
    for _ in range(ROUNDS):
        raw.append(total / raw_driver(_fresh(admin), rows))
        gw.append(total / gateway_path(_fresh(admin), groups))
    return max(gw), max(raw)


def run() -> list[Record]:
    pg = PostgresProcess(fast=False)
    pg.start()
    try:
        dense = _measure(pg.url, (DEVICES, BATCHES, SIGNALS))
        fleet = _measure(pg.url, FLEET)
    finally:
        pg.remove()
    note = (
        f"groups of {GROUP_MAX} batches a transaction, private PostgreSQL with fsync on,"
        f" best of {ROUNDS}, alternated, fresh database each"
    )
    return [
        Record(
            "gateway_ingest_pg_signals_per_s",
            dense[0],
            "signals/s",
            "raw psycopg COPY + INSERT...SELECT, same rows and groups",
            dense[1],
            f"{DEVICES * BATCHES} batches of {SIGNALS} signals; {note}",
        ),
        Record(
            "gateway_ingest_pg_fleet_signals_per_s",
            fleet[0],
            "signals/s",
            "raw psycopg COPY + INSERT...SELECT, same rows and groups",
            fleet[1],
            f"{FLEET[0] * FLEET[1]} batches of {FLEET[2]} signals; {note}",
        ),
    ]
