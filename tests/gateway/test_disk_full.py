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
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import psycopg

from cloud_gateway.db.faults import classify
from cloud_gateway.errors import StoreFull
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import Ack, Batch, Signal
from protocol.ids import new_id, utcnow
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess
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
