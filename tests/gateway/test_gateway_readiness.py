"""Honest health: `/healthz` is liveness only; `/readyz` fails while the broker is away, the
database cannot be written or an owned loop is down, and recovers when they are back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from cloud_gateway.runtime.gateway import Gateway
from daemonkit.supervisor import Supervisor
from simulators.brokers import MosquittoProcess
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually


async def _get(port: int | None, path: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.json()


async def test_readyz_fails_when_the_broker_dies_and_recovers_when_it_returns(
    own_mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, own_mosquitto, db=gateway_db)
    async with Gateway(settings) as gw:
        status, body = await _get(gw.http_port, "/readyz")
        assert (status, body["ready"]) == (200, True), body
        assert all(check["ok"] for check in body["checks"].values())

        own_mosquitto.kill()
        await eventually(lambda: not gw.link_connected, 5, "the link sees the broker die")
        status, body = await _get(gw.http_port, "/readyz")
        assert (status, body["ready"]) == (503, False)
        assert body["checks"]["broker"] == {"ok": False}
        assert body["checks"]["database"]["ok"] and body["checks"]["loops"]["ok"]
        status, live = await _get(gw.http_port, "/healthz")  # liveness: still alive
        assert (status, live["status"]) == (200, "ok")

        await asyncio.to_thread(own_mosquitto.start)
        await asyncio.wait_for(gw.wait_connected(), 15)
        status, body = await _get(gw.http_port, "/readyz")
        assert (status, body["ready"]) == (200, True), body


async def test_readyz_names_a_database_that_cannot_be_written(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    # The store's own connection made read-only, in each dialect's words.
    read_only = {
        "sqlite": ("PRAGMA query_only = ON", "PRAGMA query_only = OFF"),
        "postgresql": (
            "SET default_transaction_read_only = on",
            "SET default_transaction_read_only = off",
        ),
    }
    async with Gateway(settings) as gw:
        on, off = read_only[gw.db.dialect.name]
        await gw.db.call(lambda store: store.conn.execute(on))
        status, body = await _get(gw.http_port, "/readyz")
        assert status == 503
        assert body["checks"]["database"]["ok"] is False
        assert "not writable" in body["checks"]["database"]["error"]
        await gw.db.call(lambda store: store.conn.execute(off))
        status, body = await _get(gw.http_port, "/readyz")
        assert status == 200, body


async def test_a_loop_that_dies_is_counted_shown_down_and_restarted() -> None:
    loops = Supervisor(first_delay=0.2)
    runs: list[int] = []
    stay = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")
        await stay.wait()

    loops.start("flaky", flaky)
    await eventually(lambda: loops.restarts["flaky"] == 1, 2, "the crash is counted")
    assert loops.down() == ["flaky"]  # waiting out its backoff: not ready meanwhile
    await eventually(lambda: len(runs) == 2, 2, "the loop is restarted")
    assert loops.down() == []
    assert loops.status() == {"flaky": {"running": True, "restarts": 1}}
    await loops.stop()
