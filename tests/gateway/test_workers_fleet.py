"""Gateway workers as a fleet, real processes on one private PostgreSQL and one private
Mosquitto (`$share/gateway/...`, MQTT 5 clean start):

- 3 workers, 200 devices, 4,000 batches; one worker SIGKILLed and one added mid-stream: every
  batch stored once and acked, every signal once.
- a worker killed while holding the scheduler's lease is replaced within the lease, and a
  scheduled campaign's start and end each happen exactly once.
- SIGTERM drains: the worker exits 0 within a bound, leaves the registry and its lease.

The same start on SQLite is refused with a clear error (one SQLite file serves one worker):
`tests/gateway/test_store_backends.py::test_a_second_gateway_process_on_one_sqlite_file_is_refused`.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from cloud_gateway.db.workers import HEARTBEAT_S
from cloud_gateway.runtime.fleet import LEASE_S, ONCE_LEASE, RENEW_S
from protocol.ids import utcnow
from simulators.brokers import MosquittoProcess
from tests.support.processes import tail
from tests.support.waiting import eventually
from tests.support.workers import Devices, Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICES, PER_DEVICE = 200, 20  # 4,000 batches, 8,000 signals


def _scalar(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


async def scalar(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """One value from the database, off the event loop."""
    return await asyncio.to_thread(_scalar, url, sql, params)


def no_tracebacks(fleet: Fleet) -> None:
    for n in fleet.procs:
        text = fleet.log(n).read_text(errors="replace")
        assert not re.search(r"Traceback", text), f"worker {n}:\n{tail(fleet.log(n))}"


async def holder(fleet: Fleet, ask: int) -> str | None:
    """The id of the live worker holding the once-only lease, as `GET /v1/gateways` says."""
    body = await fleet.get(ask, "/v1/gateways")
    held = [w["id"] for w in body["workers"] if ONCE_LEASE in w["leases"]]
    assert len(held) <= 1, body
    return held[0] if held else None


async def test_three_workers_lose_nothing_when_one_dies_and_one_joins_mid_stream(
    own_mosquitto: MosquittoProcess, postgres_url: str, tmp_path: Path
) -> None:
    fleet = Fleet(own_mosquitto, postgres_url, tmp_path)
    url = postgres_url
    try:
        for n in range(3):
            await fleet.add(n)
        devices = Devices(fleet.topics, DEVICES, PER_DEVICE)
        total = len(devices.payloads)
        stream = asyncio.create_task(
            devices.run(own_mosquitto.port, rate=400, resend_after_s=3, timeout=150)
        )
        async with asyncio.timeout(60):
            while await scalar(url, "SELECT count(*) FROM batches") < total // 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polled: the condition lives in the database
        victim = fleet.procs[1]
        victim.send_signal(signal.SIGSTOP)  # frozen: its share piles up unacked in its socket
        await asyncio.sleep(1.0)
        victim.send_signal(signal.SIGKILL)  # then dies with all of it
        victim.wait(timeout=10)
        stored_at_kill = await scalar(url, "SELECT count(*) FROM batches")
        async with asyncio.timeout(60):
            while await scalar(url, "SELECT count(*) FROM batches") < 2 * total // 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await fleet.add(3)  # a new worker joins the group mid-stream
        await stream

        assert stored_at_kill < total
        assert devices.unacked == []  # every batch acked
        assert await scalar(url, "SELECT count(*) FROM batches") == total  # none lost
        rows = await scalar(
            url,
            "SELECT count(DISTINCT (device_id, outbox_id, seq)) FROM batches WHERE outbox_id = %s",
            (devices.outbox,),
        )
        assert rows == total  # each (device, outbox, seq) once
        assert await scalar(url, "SELECT count(*) FROM signals") == 2 * total
        assert await scalar(url, "SELECT count(DISTINCT id) FROM signals") == 2 * total
        assert devices.sends > total  # resends happened (the victim's share), stored once
        # The new member takes a share of what comes after it joined (on a loaded host the
        # first stream can end before its subscription is in place).
        more = Devices(fleet.topics, 20, 3)
        await more.run(own_mosquitto.port, rate=200, resend_after_s=3, timeout=60)
        assert more.unacked == []
        joined = await fleet.get(3, "/v1/stats")
        assert joined["messages_received"] > 0  # the new member took a share
        assert joined["fleet_devices"] == DEVICES  # figures of the whole fleet

        async def victim_gone() -> bool:
            ids = {w["pid"] for w in (await fleet.get(0, "/v1/gateways"))["workers"]}
            return ids == {fleet.procs[n].pid for n in (0, 2, 3)}

        await eventually(victim_gone, 15, "the killed worker leaves the live list")
        assert await holder(fleet, 0) is not None  # one survivor runs the once-only loops
        no_tracebacks(fleet)
    finally:
        fleet.stop_all()


@pytest.fixture
async def two_workers(
    own_mosquitto: MosquittoProcess, postgres_url: str, tmp_path: Path
) -> AsyncIterator[Fleet]:
    """Worker 0, holding the once-only lease, and worker 1; both stopped after the test."""
    fleet = Fleet(own_mosquitto, postgres_url, tmp_path)
    try:
        await fleet.add(0)
        await eventually(lambda: holder(fleet, 0), 10, "worker 0 takes the lease")
        await fleet.add(1)
        yield fleet
        no_tracebacks(fleet)
    finally:
        fleet.stop_all()


async def test_a_killed_scheduler_is_replaced_within_its_lease_and_acts_once(
    two_workers: Fleet, postgres_url: str
) -> None:
    fleet = two_workers
    now = utcnow()
    starts, ends = now + timedelta(seconds=4), now + timedelta(seconds=16)
    auth = {"Authorization": f"Bearer {fleet.token}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{fleet.ports[1]}", headers=auth) as http:
        resp = await http.post(
            "/v1/campaigns",
            json={
                "name": "on time, once",
                "cohorts": ["all"],
                "starts_at": starts.isoformat(),
                "ends_at": ends.isoformat(),
                "offers": [
                    {
                        "type": "coupon",
                        "title": "x",
                        "category": "games",
                        "surfaces": ["tv_home_banner"],
                    }
                ],
            },
        )
        assert resp.status == 201, await resp.text()
        cid = (await resp.json())["id"]
        resp = await http.post(f"/v1/campaigns/{cid}/launch")
        assert (await resp.json())["state"] == "scheduled"
    assert f"-{fleet.procs[0].pid}-" in (await holder(fleet, 1) or "")  # worker 0 holds it
    killed_at = time.monotonic()
    fleet.procs[0].send_signal(signal.SIGKILL)  # the scheduler dies holding its lease
    fleet.procs[0].wait(timeout=10)
    survivor = fleet.procs[1].pid

    async def taken_over() -> bool:  # the lease row itself (the registry lags a beat)
        sql = "SELECT holder FROM leases WHERE name = %s"
        found = await scalar(postgres_url, sql, (ONCE_LEASE,))
        return found is not None and f"-{survivor}-" in found

    await eventually(taken_over, LEASE_S + 2 * RENEW_S, "the survivor takes the lease")
    took = time.monotonic() - killed_at
    assert took <= LEASE_S + RENEW_S + 1, took

    async def state_is(want: str) -> bool:
        sql = "SELECT state FROM campaigns WHERE id = %s"
        return bool(await scalar(postgres_url, sql, (cid,)) == want)

    await eventually(lambda: state_is("live"), 20, "the campaign starts")
    await eventually(lambda: state_is("ended"), 30, "the campaign ends")
    await asyncio.sleep(2)  # a few more ticks: nothing is applied again
    actions = await scalar(
        postgres_url,
        "SELECT array_agg(action ORDER BY id) FROM audit WHERE target = %s",
        (cid,),
    )
    assert actions == [
        "campaign.create",
        "campaign.launch",
        "campaign.start",
        "campaign.end",
    ]


async def test_sigterm_drains_a_worker_and_hands_its_lease_on_at_once(
    two_workers: Fleet, postgres_url: str
) -> None:
    fleet = two_workers
    devices = Devices(fleet.topics, 50, 20)
    stream = asyncio.create_task(
        devices.run(fleet.broker.port, rate=300, resend_after_s=3, timeout=60)
    )
    async with asyncio.timeout(30):
        while len(devices.acked) < 200:  # noqa: ASYNC110 - polled: set by the collector
            await asyncio.sleep(0.02)
    began = time.monotonic()
    fleet.procs[0].send_signal(signal.SIGTERM)  # mid-stream
    code = await asyncio.to_thread(fleet.procs[0].wait, 20)
    drained_in = time.monotonic() - began
    assert code == 0, tail(fleet.log(0))
    assert drained_in < 12, drained_in
    body = await fleet.get(1, "/v1/gateways")
    assert [w["pid"] for w in body["workers"]] == [fleet.procs[1].pid]  # it left
    # released, not left to expire: no row of worker 0's is left; the other takes it at its
    # next renewal (the registry shows it a heartbeat later)
    leases = await scalar(postgres_url, "SELECT array_agg(holder) FROM leases")
    assert not any(f"-{fleet.procs[0].pid}-" in h for h in leases or []), leases
    await eventually(lambda: holder(fleet, 1), RENEW_S + HEARTBEAT_S + 3, "the lease moves")
    await stream
    assert devices.unacked == []
    total = len(devices.payloads)
    assert await scalar(postgres_url, "SELECT count(*) FROM batches") == total
