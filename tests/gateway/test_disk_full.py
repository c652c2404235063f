"""Issue 13, a full disk is a state on the gateway, not a crash: the API answers 507 with
`Retry-After` (and the free space), `/readyz` fails, ingestion holds (no ack for a batch not
stored, so the device keeps it and sends it again) and resumes when space is back; the
process and its loops stay up. On both backends (`tests/support/store_faults.py` says how
each is filled)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import psycopg
import pytest

from cloud_gateway.db.faults import classify
from cloud_gateway.errors import StoreFull
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import Ack, Batch, Signal
from protocol.ids import new_id, utcnow
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess
from simulators.postgres import PostgresProcess
from tests.support.builders import CAMPAIGN_OFFER
from tests.support.gateway_world import gateway_settings
from tests.support.store_faults import allow_writes, fail_writes
from tests.support.waiting import eventually

DEVICE = "tv-full-0001"


def _batch(seq: int, signals: int, outbox: str) -> bytes:
    now = utcnow()
    return codec.encode(
        Batch(
            device_id=DEVICE,
            seq=seq,
            sent_at=now,
            agent_version="0.1.0",
            outbox_id=outbox,
            signals=[
                Signal(id=new_id(), kind="content_view", at=now, attrs={"genre": "x" * 200})
                for _ in range(signals)
            ],
        ),
        compress=True,
    )


def _big_campaign() -> str:
    """A campaign whose document needs new pages (100 offers with long bodies)."""
    offers = [{**CAMPAIGN_OFFER, "body": "b" * 2000} for _ in range(100)]
    return json.dumps({"name": "big", "cohorts": ["all"], "offers": offers})


@contextlib.asynccontextmanager
async def _device(port: int, topics: Topics) -> AsyncIterator[tuple[aiomqtt.Client, list[int]]]:
    """A device's MQTT session: publishes batches, collects the seqs acked to it."""
    acked: list[int] = []
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"dev-{new_id()[:8]}") as client:
        await client.subscribe(topics.ack(DEVICE), qos=1)

        async def collect() -> None:
            async for message in client.messages:
                acked.extend(Ack.model_validate_json(bytes(message.payload)).acks)

        task = asyncio.create_task(collect())
        try:
            yield client, acked
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as resp:
        return resp.status, await resp.json()


async def test_a_full_disk_holds_ingest_answers_507_and_fails_readiness_until_space_is_back(
    tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    outbox = new_id()
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        topics = settings.topics
        async with (
            _device(mosquitto.port, topics) as (device, acked),
            aiohttp.ClientSession(
                f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
            ) as http,
        ):
            await device.publish(topics.batch(DEVICE), _batch(1, 5, outbox), qos=1)
            await eventually(lambda: 1 in acked, 10, "the first batch acked")

            await gw.db.call(fail_writes)
            await device.publish(topics.batch(DEVICE), _batch(2, 200, outbox), qos=1)
            await eventually(lambda: gw.counters["store_full"] >= 1, 10, "a failed commit")
            status, ready = await _get(http, "/readyz")
            assert status == 503, ready
            assert ready["checks"]["database"]["full"] is True
            assert ready["checks"]["broker"]["ok"] and ready["checks"]["loops"]["ok"]
            async with http.post("/v1/campaigns", data=_big_campaign()) as resp:
                assert resp.status == 507, await resp.text()
                assert int(resp.headers["Retry-After"]) > 0
                problem = await resp.json()
            assert "full" in problem["detail"]
            if gw.db.dialect.name == "sqlite":
                assert problem["free_bytes"] > 0  # the file system's, beside the database
            status, _ = await _get(http, "/healthz")
            assert status == 200  # alive: a state, not a crash
            await asyncio.sleep(0.5)
            assert acked == [1]  # batch 2 is not stored: no ack, the device keeps it

            await gw.db.call(allow_writes)
            # the device sends it again (its ack timeout), and this time it is stored
            await device.publish(topics.batch(DEVICE), _batch(2, 200, outbox), qos=1)
            await eventually(lambda: 2 in acked, 10, "batch 2 acked once space is back")
            async with http.post("/v1/campaigns", data=_big_campaign()) as resp:
                assert resp.status == 201, await resp.text()
            await eventually(lambda: _ready(http), 15, "ready again")
        assert gw.counters["batches_stored"] == 2
        assert gw.loops.down() == []
        stored = await gw.db.call(
            lambda s: s.one("SELECT count(*) AS n FROM signals WHERE device_id = ?", [DEVICE])
        )
        assert stored is not None and stored["n"] == 205


async def _ready(http: aiohttp.ClientSession) -> bool:
    status, _ = await _get(http, "/readyz")
    return status == 200


def test_disk_full_is_read_from_either_driver_and_the_os() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    io = sqlite3.OperationalError("disk I/O error")
    io.sqlite_errorcode = 522  # SQLITE_IOERR_SHORT_READ: the primary code is what counts
    assert classify(full) == "full"
    assert classify(io) == "unavailable"
    assert classify(psycopg.errors.DiskFull("could not extend file")) == "full"
    assert classify(psycopg.errors.IoError("read error")) == "unavailable"
    assert classify(OSError(errno.ENOSPC, "No space left on device")) == "full"
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = full
    assert classify(wrapped) == "full"
    assert classify(StoreFull("x")) == "full"
    assert classify(ValueError("a bug")) is None


# ---------------------------------------------------------------- a really full disk

TINY_DISK = 16 * 1024 * 1024
MOVED = ("batches", "devices", "signals")
"""PostgreSQL tables put on the tiny disk (the signals partitions too): those every batch
writes to."""


def _mount(disk: Path) -> None:
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TINY_DISK}", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")


def _tables(url: str, tablespace: str | None) -> list[str]:
    """The gateway's tables every batch writes to (and their partitions), or those now in
    `tablespace`."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, coalesce(t.spcname, '') FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        ).fetchall()
    if tablespace is not None:
        return [name for name, space in rows if space == tablespace]
    return [name for name, _ in rows if name in MOVED or name.startswith("signals_")]


@dataclass
class TinyDisk:
    """A 16 MiB tmpfs; on PostgreSQL, a tablespace on it (`move()` puts the tables every
    batch writes to there, partitions made since included)."""

    path: Path
    url: str | None = None
    tablespace: str | None = None

    def move(self) -> None:
        if self.url is None or self.tablespace is None:
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            for table in _tables(self.url, None):
                conn.execute(f'ALTER TABLE "{table}" SET TABLESPACE {self.tablespace}')

    def partitioned(self) -> bool:
        """True once today's signals partition exists (the retention loop makes it at the
        start, by `CREATE TABLE ... LIKE` and `ATTACH`: in the default tablespace)."""
        if self.url is None:
            return True
        return f"signals_p{utcnow():%Y%m%d}" in _tables(self.url, None)

    def move_back(self) -> None:
        if self.url is None or self.tablespace is None:
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            for table in _tables(self.url, self.tablespace):
                conn.execute(f'ALTER TABLE "{table}" SET TABLESPACE pg_default')


@pytest.fixture
def tiny_disk(
    tmp_path: Path, gateway_db: str | None, request: pytest.FixtureRequest
) -> Iterator[TinyDisk]:
    """A 16 MiB tmpfs of this test's own, where the kernel answers ENOSPC when it is full:
    the gateway's data directory (SQLite), or a tablespace holding the tables every batch
    writes to (PostgreSQL: its error 53100 is then the server's own). Needs the right to
    mount (root with CAP_SYS_ADMIN, as here); skipped where it is missing."""
    if gateway_db is None:
        disk = tmp_path / "disk"
        _mount(disk)
        try:
            yield TinyDisk(disk)
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
        return
    pg: PostgresProcess = request.getfixturevalue("postgres")
    name = f"tiny_{new_id()[-8:].replace('-', '')}"
    tiny = TinyDisk(pg.base / name, gateway_db, name)  # a directory the server may enter
    _mount(tiny.path)
    if pg.user is not None:
        entry = pwd.getpwnam(pg.user)
        os.chown(tiny.path, entry.pw_uid, entry.pw_gid)
        tiny.path.chmod(0o700)
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE {name} LOCATION '{tiny.path}'")
        yield tiny
    finally:
        tiny.move_back()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"DROP TABLESPACE IF EXISTS {name}")
        subprocess.run(["umount", "-l", str(tiny.path)], check=False)


def _ballast(disk: Path, leave: int) -> Path:
    """A file that fills the disk but `leave` bytes; delete it to give the space back."""
    free = shutil.disk_usage(disk).free
    path = disk / "ballast"
    chunk = b"\0" * (1024 * 1024)
    with path.open("wb") as out:
        left = max(free - leave, 0)
        while left > 0:
            out.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    return path


@pytest.mark.integration  # mounts a tmpfs (a subprocess)
async def test_a_really_full_disk_holds_ingest_until_space_is_back(
    tiny_disk: TinyDisk, tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None
) -> None:
    data = tiny_disk.path if gateway_db is None else tmp_path  # SQLite: the file on it
    settings = gateway_settings(data, mosquitto, db=gateway_db)
    outbox = new_id()
    async with Gateway(settings) as gw:
        topics = settings.topics
        await eventually(partial(asyncio.to_thread, tiny_disk.partitioned), 10, "partitions")
        await asyncio.to_thread(tiny_disk.move)  # with the partitions made at the start
        ballast = await asyncio.to_thread(_ballast, tiny_disk.path, 1024 * 1024)
        async with _device(mosquitto.port, topics) as (device, acked):
            seq = 0
            while gw.counters["store_full"] == 0:  # ENOSPC from the kernel: SQLITE_FULL, 53100
                seq += 1
                assert seq <= 200, "the disk never filled"
                await device.publish(topics.batch(DEVICE), _batch(seq, 200, outbox), qos=1)
                await eventually(partial(_stored_or_full, gw, acked, seq), 10, "stored or full")
            ready = await gw.readiness()
            assert not ready["ready"] and ready["checks"]["database"]["full"], ready
            if gateway_db is None:
                assert ready["checks"]["database"]["free_bytes"] < 8 * 1024 * 1024
            refused = [s for s in range(1, seq + 1) if s not in acked]
            assert refused and refused[-1] == seq  # the batch that met the full disk: no ack
            assert gw.loops.down() == [] and gw.link_connected  # alive and connected

            await asyncio.to_thread(ballast.unlink)  # space is back
            for s in refused:  # the device sends its unacked batches again
                await device.publish(topics.batch(DEVICE), _batch(s, 200, outbox), qos=1)
            await eventually(lambda: set(range(1, seq + 1)) <= set(acked), 15, "all acked")
            await eventually(lambda: _gateway_ready(gw), 15, "ready again")
        assert gw.counters["batches_stored"] == seq


def _stored_or_full(gw: Gateway, acked: list[int], seq: int) -> bool:
    return seq in acked or gw.counters["store_full"] > 0


async def _gateway_ready(gw: Gateway) -> bool:
    return bool((await gw.readiness())["ready"])
