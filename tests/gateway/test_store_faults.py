"""Issue 13, faults of the gateway's store the suite injects (the SQLite practice): an I/O
error at every write (uplink commits, births, claims, pushes) costs nothing that a resend
does not bring back, stops no loop and fails readiness meanwhile; a damaged database file is
refused at start with one line naming the file and what to do, and left as it is."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from cloud_gateway.db.backend import Session
from cloud_gateway.db.store import Store
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import Ack, Batch, ClaimRequest, ClaimResult, Signal, State
from protocol.ids import new_id, utcnow
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess
from tests.support.builders import CAMPAIGN_OFFER
from tests.support.gateway_world import gateway_settings
from tests.support.store_faults import FailingWrites, allow_writes, fail_writes
from tests.support.waiting import eventually

DEVICE = "tv-ioerr-0001"


def _io_errors(store: Session) -> None:
    """Every write of the store fails with an I/O error from now on (the session seam on
    SQLite, SQLSTATE 58030 on PostgreSQL; see tests/support/store_faults.py)."""
    if store.dialect.name == "sqlite":
        assert isinstance(store, Store)
        store.conn = FailingWrites(store.conn)  # type: ignore[assignment]
    else:
        fail_writes(store, "58030")


def _healed(store: Session) -> None:
    if store.dialect.name == "sqlite":
        assert isinstance(store, Store) and isinstance(store.conn, FailingWrites)
        store.conn = store.conn.conn
    else:
        allow_writes(store)


@contextlib.asynccontextmanager
async def _device(
    port: int, topics: Topics
) -> AsyncIterator[tuple[aiomqtt.Client, dict[str, list[Any]]]]:
    """A device's MQTT session: what comes back to it, by kind."""
    got: dict[str, list[Any]] = {"acks": [], "claims": []}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"dev-{new_id()[:8]}") as client:
        await client.subscribe(topics.ack(DEVICE), qos=1)
        await client.subscribe(topics.claim_down(DEVICE), qos=1)

        async def collect() -> None:
            async for message in client.messages:
                payload = bytes(message.payload)
                if str(message.topic) == topics.ack(DEVICE):
                    got["acks"].extend(Ack.model_validate_json(payload).acks)
                else:
                    got["claims"].append(
                        codec.validate_tolerant(json.loads(payload), ClaimResult)[0]
                    )

        task = asyncio.create_task(collect())
        try:
            yield client, got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_an_io_error_at_every_write_loses_nothing_a_resend_does_not_bring_back(
    tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    topics = settings.topics
    outbox = new_id()
    now = utcnow()
    batch = codec.encode(
        Batch(
            device_id=DEVICE,
            seq=1,
            sent_at=now,
            agent_version="0.1.0",
            outbox_id=outbox,
            signals=[Signal(id=new_id(), kind="app_open", at=now, attrs={"app": "tv"})],
        )
    )
    birth = codec.encode(State(device_id=DEVICE, status="online", at=now, profile="tv"))
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        async with (
            _device(mosquitto.port, topics) as (device, got),
            aiohttp.ClientSession(
                f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
            ) as http,
        ):
            offer = {**CAMPAIGN_OFFER, "id": "coupon-1", "limited": True, "stock": 5}
            body = {"name": "sale", "cohorts": ["all"], "offers": [offer]}
            async with http.post("/v1/campaigns", json=body) as resp:
                assert resp.status == 201, await resp.text()
                cid = (await resp.json())["id"]
            claim = codec.encode(
                ClaimRequest(
                    id=new_id(), device_id=DEVICE, offer_id="coupon-1", campaign_id=cid, at=now
                )
            )

            await gw.db.call(_io_errors)
            async with http.post(f"/v1/campaigns/{cid}/launch") as resp:  # pushes: a write
                assert resp.status == 503, await resp.text()
                assert int(resp.headers["Retry-After"]) > 0
            for topic, payload in (
                (topics.batch(DEVICE), batch),  # the uplink's group commit
                (topics.state(DEVICE), birth),  # a birth
                (topics.claim_up(DEVICE), claim),  # a claim
            ):
                await device.publish(topic, payload, qos=1)
            await eventually(
                lambda: gw.counters["store_errors"] >= 3, 10, "each write failed and counted"
            )
            ready = await gw.readiness()
            assert not ready["ready"] and not ready["checks"]["database"]["ok"], ready
            assert ready["checks"]["loops"] == {**ready["checks"]["loops"], "ok": True, "down": []}
            await asyncio.sleep(0.3)
            assert got == {"acks": [], "claims": []}  # nothing answered that was not stored

            await gw.db.call(_healed)
            async with http.post(f"/v1/campaigns/{cid}/launch") as resp:
                assert resp.status == 200, await resp.text()
            for topic, payload in (  # the device sends again what was not answered
                (topics.batch(DEVICE), batch),
                (topics.state(DEVICE), birth),
                (topics.claim_up(DEVICE), claim),
            ):
                await device.publish(topic, payload, qos=1)
            await eventually(lambda: got["acks"] == [1] and got["claims"], 10, "answered")
            assert got["claims"][0].granted
            await eventually(lambda: _is_ready(gw), 10, "ready again")
        view = await gw.db.call(
            lambda s: s.one("SELECT status FROM devices WHERE device_id = ?", [DEVICE])
        )
        assert view is not None and view["status"] == "online"
        assert gw.loops.down() == []


async def _is_ready(gw: Gateway) -> bool:
    return bool((await gw.readiness())["ready"])


# ---------------------------------------------------------------- damaged files on open


def _made(path: Path) -> bytes:
    """A real gateway database with some data in it; its bytes."""
    store = Store(path)
    with store.transaction():
        store.conn.execute("CREATE TABLE filler (x TEXT)")
        store.conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 1000,)] * 500)
    store.close()
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    return path.read_bytes()


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda data: os.urandom(len(data)),
    "truncated to half": lambda data: data[: len(data) // 2 // 4096 * 4096],
    "truncated to 90 %": lambda data: data[: len(data) * 9 // 10 // 4096 * 4096],
    "header only": lambda data: data[:100],
    "zeroed first page": lambda data: b"\0" * 4096 + data[4096:],
}


@pytest.mark.integration  # runs the CLI in a subprocess
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_database_is_refused_with_one_line_and_left_as_it_is(
    tmp_path: Path, damage: str
) -> None:
    data_dir = tmp_path / "gw"
    data_dir.mkdir()
    db = data_dir / "gateway.db"
    db.write_bytes(DAMAGE[damage](_made(db)))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    run = subprocess.run(  # the real CLI an operator runs (no broker needed to refuse)
        [
            sys.executable,
            "-m",
            "edgemart",
            "gateway",
            "run",
            "--data-dir",
            str(data_dir),
            "--broker",
            "mqtt://127.0.0.1:9",
            "--http-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr  # one clear line, no traceback
    assert str(db) in lines[0] and "damaged" in lines[0]
    assert "backup" in lines[0] and f"mv {db} {db}.damaged" in lines[0]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # not replaced, not touched
    assert sorted(p.name for p in data_dir.iterdir() if p.name.startswith("gateway.db")) == [
        "gateway.db",
        "gateway.db.lock",
    ]
