"""A full disk is a state, not a crash, in-process: SQLite's own SQLITE_FULL (the database held
at its size with `PRAGMA max_page_count`, as SQLite's tests do) answers 507 with Retry-After and
the free space, readiness says `disk: full`, the reserve is released, stored batches still go
out and acks still apply; with room again, new data is taken. The real ENOSPC of a tiny file
system, with a restart on the full disk, is `tests/faults/test_disk_full_tmpfs.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.store.core import Store
from agent.store.space import DiskSpace, is_full, reserve_for
from protocol import codec
from tests.support.local_device import Client, Device, running_device
from tests.support.waiting import eventually

ATTRS: dict[str, Any] = {"category": "games", "query_len": 4}
SIGNAL: dict[str, Any] = {"kind": "search", "attrs": ATTRS}


async def hold_database_at_its_size(device: Device, extra_pages: int = 0) -> None:
    store = device.agent.store

    def hold() -> None:
        db = store.thread.conn()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        db.execute(f"PRAGMA max_page_count={pages + extra_pages}")

    await store.call(hold)


async def post_until_full(client: Client, attempts: int = 400) -> Any:
    for _ in range(attempts):
        body = {"signals": [{**SIGNAL, "attrs": {**ATTRS, "pad": "x" * 200}}] * 20}
        response = await client.post("/v1/signals", json=body)
        if response.status != 202:
            return response
    raise AssertionError("the database never filled")


async def test_a_full_database_answers_507_and_the_agent_keeps_running(
    device: Device, client: Client
) -> None:
    device.transports.last.up()
    await device.agent.set_consent({"analytics": True, "personalization": True, "marketing": True})
    store = device.agent.store
    assert store.space.slack.is_file()  # the reserve is held from the start
    await hold_database_at_its_size(device)
    full = await post_until_full(client)
    assert full.status == 507
    assert full.headers["Retry-After"] == "60"
    body = await full.json()
    assert body["errors"][0]["loc"] == "(disk)" and "full" in body["errors"][0]["msg"]
    assert isinstance(body["free_bytes"], int) and body["free_bytes"] > 0
    assert not store.space.slack.exists()  # released for what must still run
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["disk"] == "full"
    assert (await client.get("/healthz")).status == 200
    status = await (await client.get("/v1/status")).json()
    assert status["disk"]["full"] is True and status["disk"]["full_events"] == 1
    # outcomes and claims wait too; nothing crashed
    again = await client.post("/v1/signals", json={"signals": [SIGNAL]})
    assert again.status == 507
    assert device.agent.counters["api_disk_full"] >= 2
    assert device.agent.parts.loops.down() == []


async def test_stored_batches_still_go_out_and_acks_apply_on_a_full_disk(
    device: Device, client: Client
) -> None:
    agent = device.agent
    store = agent.store
    transport = device.transports.last
    await agent.set_consent({"analytics": True, "personalization": True, "marketing": True})
    assert (await client.post("/v1/signals", json={"signals": [SIGNAL] * 50})).status == 202
    await hold_database_at_its_size(device, extra_pages=2)
    await post_until_full(client)
    assert store.space.full
    held = store.depth
    transport.up()  # the link comes back while the disk is full
    await eventually(lambda: any("/batch" in t for t, _, _ in transport.published), timeout=10)
    seqs = sorted(
        {
            codec.decode_object(p, allow_zlib=True)["seq"]
            for t, p, _ in transport.published
            if "/batch" in t
        }
    )
    ack = device.ack(seqs)
    await transport.deliver("ack", ack)
    assert agent.counters["batches_acked"] == len(seqs)
    assert store.depth < held  # rows left the device
    assert agent.parts.loops.down() == []


async def test_with_room_again_new_data_is_taken_and_the_reserve_made_again(
    device: Device, client: Client
) -> None:
    store = device.agent.store
    await hold_database_at_its_size(device)
    await post_until_full(client)
    assert store.space.full and not store.space.slack.exists()

    def room() -> None:
        store.thread.conn().execute("PRAGMA max_page_count=1073741823")

    await store.call(room)
    status = await store.call(store.recheck_space)  # what the maintenance loop does
    assert status["full"] is False and store.space.slack.stat().st_size == store.space.reserve
    assert (await client.post("/v1/signals", json={"signals": [SIGNAL]})).status == 202
    assert (await client.get("/readyz")).status in (200, 503)
    assert (await (await client.get("/readyz")).json())["disk"] == "ok"


def test_the_state_follows_the_free_space_and_the_quota_is_bounded_by_it(tmp_path: Path) -> None:
    free = {"bytes": 100 * 1024 * 1024}
    space = DiskSpace(tmp_path, reserve_for(8 * 1024 * 1024), free=lambda _: free["bytes"])
    space.prepare()
    assert not space.full and space.slack.stat().st_size == space.reserve == 1024 * 1024
    err = space.on_full(OSError(28, "No space left on device"))
    assert err.free_bytes == free["bytes"] and space.full and not space.slack.exists()
    free["bytes"] = space.reserve  # not room enough to take data again
    assert space.recheck(force=True) is True
    free["bytes"] = 3 * space.reserve
    assert space.recheck(force=True) is False and space.slack.exists()
    assert is_full(OSError(28, "x")) and not is_full(OSError(5, "x"))


async def test_an_agent_starts_on_a_disk_without_room_for_its_reserve(tmp_path: Path) -> None:
    """Start-up on a full disk: no reserve can be made, so the agent runs in the full state
    (readiness says so) and takes data once there is room."""
    async with running_device(tmp_path) as device:
        store = device.agent.store
        store.space._free = lambda _: 1024  # a disk with 1 KiB left
        await store.call(store.space.release)
        await store.call(store.space.settle)
        assert store.space.full
        assert (await device.agent.readiness())["disk"] == "full"
        store.space._free = lambda _: 10**9
        await store.call(store.recheck_space)
        assert (await device.agent.readiness())["disk"] == "ok"


async def test_the_quota_in_force_follows_the_free_space(tmp_path: Path) -> None:
    """Bounded by what the store holds plus the free space beyond the reserve, at each look:
    on a disk smaller than the quota the outbox evicts before the disk is full."""
    free = {"bytes": 10**10}
    store = Store(tmp_path / "agent.sqlite3", disk_quota=16 * 1024 * 1024, clock=lambda: 1000.0)
    store.space._free = lambda _: free["bytes"]  # the disk as the test says
    await store.open()
    try:
        full_budget = store.outbox_max_bytes
        assert store.quota_bytes == 16 * 1024 * 1024
        free["bytes"] = 3 * 1024 * 1024  # another writer took most of the disk
        await store.call(store.recheck_space)
        assert store.quota_bytes < 4 * 1024 * 1024
        assert store.outbox_max_bytes < full_budget
        free["bytes"] = 10**10  # room again
        await store.call(store.recheck_space)
        assert store.quota_bytes == 16 * 1024 * 1024 and store.outbox_max_bytes == full_budget
    finally:
        await store.close()
