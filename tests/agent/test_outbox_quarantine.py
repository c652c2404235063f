"""A poisoned outbox row never stops the rows behind it: rows an older version or a bad disk
left (attrs that are not JSON, a NaN, a kind the envelope refuses, features that are not
finite) are moved to the quarantine as the uplink meets them, counted, reported in status and
kept for export (`GET /v1/quarantine`); every good row is sent and acknowledged, and no loop
dies (today the uplink loop raised on the first such row, for good)."""

from __future__ import annotations

from typing import Any

from protocol import codec
from protocol.envelopes import Ack
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
    await device.transports.last.deliver(
        "ack", codec.encode(Ack(acks=sorted(set(seqs)), outbox_id=agent.store.outbox_id))
    )
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
