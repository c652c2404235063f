"""A poisoned outbox row never stops the rows behind it: rows an older version or a bad disk
left (attrs that are not JSON, a NaN, a kind the envelope refuses, features that are not
finite) are moved to the quarantine as the uplink meets them, counted, reported in status and
kept for export (`GET /v1/quarantine`); every good row is sent and acknowledged, and no loop
dies (today the uplink loop raised on the first such row, for good)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.store.core import Store
from agent.store.rows import NewSignal
from protocol import codec
from protocol.ids import format_time, utcnow
from tests.support.local_device import Client, Device
from tests.support.waiting import eventually

ALL = {"analytics": True, "personalization": True, "marketing": True}
POISON = {
    "bad-json": ("search", "{not json"),
    "bad-nan": ("content_view", '{"seconds": NaN}'),
    "bad-list": ("search", "[1, 2]"),
    "bad-kind": ("Not A Kind!", "{}"),
}


async def plant(device: Device) -> None:
    """Rows as an older version (or a flipped bit) could have left them in the outbox."""
    store = device.agent.store

    def write() -> None:
        with store.thread.tx() as tx:
            for row_id, (kind, attrs) in POISON.items():
                tx.execute(
                    "INSERT INTO signals(id, kind, at, attrs, priority, expires_at, created,"
                    " size) VALUES (?, ?, ?, ?, 99, 4e9, 0, 300)",
                    (row_id, kind, format_time(utcnow()), attrs),
                )
        store.counters.recount(store.thread.conn())

    await store.call(write)


def sent_ids(device: Device) -> tuple[list[int], set[str]]:
    seqs: list[int] = []
    ids: set[str] = set()
    for topic, payload, _ in device.transports.last.published:
        if topic.endswith("/batch"):
            batch = codec.decode_object(payload, allow_zlib=True)
            seqs.append(batch["seq"])
            ids |= {s["id"] for s in batch.get("signals", [])}
    return seqs, ids


async def test_poisoned_rows_are_quarantined_and_the_rest_is_sent(
    device: Device, client: Client
) -> None:
    agent = device.agent
    await agent.set_consent(ALL)
    await plant(device)  # high priority: the first rows every batch reads
    good: list[str] = (
        await (
            await client.post(
                "/v1/signals",
                json={
                    "signals": [{"kind": "search", "attrs": {"query_len": i}} for i in range(30)]
                },
            )
        ).json()
    )["ids"]
    device.transports.last.up()
    await eventually(lambda: set(good) <= sent_ids(device)[1], timeout=10)
    seqs, ids = sent_ids(device)
    assert not ids & set(POISON)  # none of them left the device
    await device.transports.last.deliver("ack", device.ack(sorted(set(seqs))))
    await eventually(lambda: agent.store.depth == 0, timeout=5)
    assert agent.parts.loops.down() == [] and agent.counters["loop_restarts"] == 0
    status = await (await client.get("/v1/status")).json()
    assert status["quarantine"] == {"rows": len(POISON)}
    assert status["accounting"]["quarantined"] == len(POISON)
    exported = await (await client.get("/v1/quarantine")).json()
    assert exported["count"] == len(POISON)
    by_id: dict[str, Any] = {r["id"]: r for r in exported["rows"]}
    assert set(by_id) == set(POISON)
    assert by_id["bad-json"]["row"]["attrs"] == "{not json"  # kept as it was
    assert "kind" in by_id["bad-kind"]["reason"]
    assert "NaN" in by_id["bad-nan"]["reason"]


async def test_a_row_that_fails_the_batch_for_any_reason_is_found_alone(tmp_path: Path) -> None:
    """A failure no check names (here a builder that chokes on one row): the rows that fail
    alone are quarantined and the rest is cut; a failure of the builder itself quarantines
    nothing and is raised (it is a bug, not a row)."""
    store = Store(tmp_path / "agent.sqlite3", durability="normal", clock=lambda: 1000.0)
    await store.open()
    try:
        rows = [
            NewSignal(i, "search", "2026-12-06T07:00:00.000Z", "{}", 50, 4e9)
            for i in ("a", "poison", "b")
        ]
        await store.call(store.outbox.accept, rows, [])

        def choke(seq: int, sigs: list[dict[str, Any]], *rest: Any) -> bytes:
            if any(s["id"] == "poison" for s in sigs):
                raise RuntimeError("cannot encode this one")
            return json.dumps([s["id"] for s in sigs]).encode()

        def broken(seq: int, sigs: list[dict[str, Any]], *rest: Any) -> bytes:
            raise RuntimeError("a bug in the builder")

        def cut(build: Any) -> Any:
            return store.batches.cut(
                max_signals=10, max_outcomes=10, max_receipts=10, include_data=True, build=build
            )

        with pytest.raises(RuntimeError, match="a bug"):  # the supervisor restarts the loop
            await store.call(cut, broken)
        assert await store.call(store.quarantine.rows) == []
        batch = await store.call(cut, choke)
        assert batch is not None and json.loads(batch.payload) == ["a", "b"]
        held = await store.call(store.quarantine.rows)
        assert [r["id"] for r in held] == ["poison"] and "cannot encode" in held[0]["reason"]
        assert store.counters.signal_rows == 2 and store.drops["quarantined"] == 1
    finally:
        await store.close()


async def test_a_batch_the_gateway_refuses_for_good_quarantines_what_it_names(
    device: Device, client: Client
) -> None:
    """`Ack.refused`: a batch the gateway can never store is not resent forever. The item the
    refusal names is quarantined; the other items go out again in a new batch and are acked;
    a refusal naming nothing quarantines the whole batch."""
    agent = device.agent
    await agent.set_consent(ALL)
    body = {"signals": [{"kind": "search", "attrs": {"query_len": i}} for i in range(3)]}
    ids: list[str] = (await (await client.post("/v1/signals", json=body)).json())["ids"]
    device.transports.last.up()
    await eventually(lambda: set(ids) <= sent_ids(device)[1], timeout=10)
    [first] = sent_ids(device)[0]
    sent = next(
        codec.decode_object(p, allow_zlib=True)
        for t, p, _ in device.transports.last.published
        if t.endswith("/batch")
    )
    named = sent["signals"][1]["id"]
    refusal = {"seq": first, "reason": "invalid", "field": "signals.1.attrs.query_len"}
    await device.transports.last.deliver(
        "ack",
        device.ack([], [refusal]),
    )
    # the rest is cut again under a new seq and sent; the named one never again
    await eventually(lambda: len(sent_ids(device)[0]) == 2, timeout=10)
    again = [
        codec.decode_object(p, allow_zlib=True)
        for t, p, _ in device.transports.last.published
        if t.endswith("/batch")
    ][1]
    assert again["seq"] != first
    assert {s["id"] for s in again["signals"]} == set(ids) - {named}
    await device.transports.last.deliver("ack", device.ack([again["seq"]]))
    await eventually(lambda: agent.store.depth == 0, timeout=5)
    exported = await (await client.get("/v1/quarantine")).json()
    assert [r["id"] for r in exported["rows"]] == [named]
    assert "signals.1.attrs.query_len" in exported["rows"][0]["reason"]
    status = await (await client.get("/v1/status")).json()
    assert status["accounting"]["batches_refused"] == 1
    assert agent.counters["batches_refused"] == 1

    # a refusal that names no item: the whole batch is quarantined
    more: list[str] = (await (await client.post("/v1/signals", json=body)).json())["ids"]
    await eventually(lambda: len(sent_ids(device)[0]) == 3, timeout=10)
    third = sent_ids(device)[0][-1]
    await device.transports.last.deliver(
        "ack",
        device.ack([], [{"seq": third, "reason": "non_finite"}]),
    )
    await eventually(lambda: agent.store.depth == 0, timeout=5)
    exported = await (await client.get("/v1/quarantine")).json()
    assert set(more) <= {r["id"] for r in exported["rows"]}
    assert len(sent_ids(device)[0]) == 3  # nothing of it resent
