"""Group commit of uplink batches: one transaction per queued group, acks only after it,
each batch stored once, one bad batch costing only itself; the batch fast path decodes
exactly what the full codec path decodes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_gateway.db.backend import Session
from cloud_gateway.db.ingest import store_batch, store_batches
from cloud_gateway.db.open import open_session
from cloud_gateway.db.store import Database
from cloud_gateway.ingest.service import AckBatcher, Ingestor, decode_valid_batch
from cloud_gateway.runtime.gateway import Gateway
from protocol import codec
from protocol.envelopes import Batch
from protocol.errors import ProtocolError
from protocol.ids import utcnow
from protocol.signing import Signer
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess
from tests.support.builders import make_batch
from tests.support.gateway_world import gateway_settings

TOPICS = Topics("edgemart/v1")
SIGNER = Signer.generate("k-test")


def batch(device_id: str, seq: int, signals: int = 3) -> Batch:
    return make_batch(device_id, seq, signals)


def count(path: Path, sql: str, params: tuple[Any, ...] = ()) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute(sql, params).fetchone()[0])


class Rig:
    """A real Ingestor (feed + run, as the gateway wires it) over a real SQLite file.

    Every ack is checked against the database, from another connection, as it goes out.
    """

    def __init__(self, path: Path, db: Database) -> None:
        self.path = path
        self.db = db
        self.counters: Counter[str] = Counter()
        self.acked: list[tuple[str, int]] = []
        self.acked_before_commit: list[tuple[str, int]] = []
        self.acks = AckBatcher(TOPICS, self._send_ack, self.counters, 0, signer=SIGNER)
        self.ingestor = Ingestor(
            TOPICS,
            db,
            acks=self.acks,
            counters=self.counters,
            group_max=8,
            queue_max=8,
        )

    def _send_ack(self, topic: str, payload: bytes) -> None:
        """The ack as it goes out (synchronously, like the MQTT client's queue): is its batch
        committed, as seen from another connection?"""
        device_id = topic.split("/")[-3]
        for seq in json.loads(payload)["acks"]:
            stored = count(
                self.path,
                "SELECT count(*) FROM batches WHERE device_id = ? AND seq = ?",
                (device_id, seq),
            )
            (self.acked if stored else self.acked_before_commit).append((device_id, seq))


async def test_groups_store_once_and_ack_only_after_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    db = await Database(path).open()
    rig = Rig(path, db)
    stream = [(d, s) for s in range(1, 11) for d in ("tv-a", "tv-b", "tv-c")]
    stream += [("tv-b", 3), ("tv-a", 7), ("tv-b", 3)]  # redeliveries, in and across groups
    try:
        async with asyncio.TaskGroup() as tg:
            committer = tg.create_task(rig.ingestor.run(), name="test-ingest-commit")
            for device_id, seq in stream:
                await rig.ingestor.feed(
                    TOPICS.batch(device_id), codec.encode(batch(device_id, seq), compress=True)
                )
            # Groups commit in order: once this one is done, everything before it is too.
            await rig.ingestor.handle(TOPICS.batch("tv-z"), codec.encode(batch("tv-z", 1)))
            await rig.acks.flush()
            committer.cancel()
    finally:
        await db.close()
    assert rig.counters["batches_stored"] == 31
    assert rig.counters["batches_duplicate"] == 3
    assert rig.counters["signals_stored"] == 93
    assert rig.acked_before_commit == []
    assert sorted(set(rig.acked)) == sorted({*stream, ("tv-z", 1)})
    assert count(path, "SELECT count(*) FROM signals") == 93
    assert count(path, "SELECT max(last_seq) FROM devices") == 10


async def test_a_failing_batch_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite3"
    db = await Database(path).open()
    with closing(sqlite3.connect(path)) as raw:  # the disk refuses one batch, for real
        raw.execute(
            "CREATE TRIGGER refuse_13 BEFORE INSERT ON batches WHEN NEW.seq = 13"
            " BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
        )
        raw.commit()
    rig = Rig(path, db)
    try:
        for seq in range(10, 17):  # queued together, so they meet in one group
            await rig.ingestor.feed(TOPICS.batch("tv-a"), codec.encode(batch("tv-a", seq)))
        await rig.ingestor.commit_waiting()
        await rig.acks.flush()
    finally:
        await db.close()
    assert rig.counters["group_commits_failed"] == 1
    assert rig.counters["store_errors"] == 1
    assert rig.counters["batches_stored"] == 6
    assert sorted(seq for _, seq in rig.acked) == [10, 11, 12, 14, 15, 16]  # 13 is resent
    assert rig.acked_before_commit == []
    assert count(path, "SELECT count(*) FROM batches WHERE seq = 13") == 0


def test_store_batches_is_one_transaction_with_duplicates_inside(
    open_store: Callable[[], Session],
) -> None:
    store = open_store()
    first, again = batch("tv-a", 1), batch("tv-a", 2)
    out = store_batches(store, [("tv-a", first), ("tv-a", again), ("tv-a", first)], utcnow())
    assert [o.new for o in out] == [True, True, False]
    assert store_batches(store, [("tv-a", again)], utcnow())[0].new is False
    store.close()
    reopened = open_store()  # across a restart: still stored once
    assert store_batch(reopened, "tv-a", first, utcnow()) is False
    reopened.close()


def slow_decode(payload: bytes) -> Batch | str:
    try:
        return codec.decode(payload, Batch, allow_zlib=True)
    except ProtocolError as exc:
        return exc.reason
    except RecursionError:
        return "malformed"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@st.composite
def near_batches(draw: st.DrawFn) -> bytes:
    doc = batch("tv-a", draw(st.integers(0, 5)), signals=draw(st.integers(0, 3))).to_wire()
    fields = ["v", "device_id", "seq", "sent_at", "signals", "stats", "receipts", "extra"]
    for name in draw(st.lists(st.sampled_from(fields), max_size=3)):
        doc[name] = draw(json_values | st.sampled_from([True, 1.0, 1, "1"]))
    signals = doc["signals"]
    if (
        isinstance(signals, list)
        and signals
        and isinstance(signals[0], dict)
        and draw(st.booleans())
    ):
        signals[0] = {**signals[0], "attrs": draw(json_values)}
    raw = json.dumps(doc).encode()
    return zlib.compress(raw) if draw(st.booleans()) else raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=near_batches() | st.binary(max_size=200))
def test_fast_path_decodes_exactly_what_the_codec_decodes(payload: bytes) -> None:
    fast = decode_valid_batch(payload, codec.MAX_COMPRESSED, codec.MAX_DECOMPRESSED)
    slow = slow_decode(payload)
    if isinstance(slow, Batch):
        assert fast is not None
        assert fast.model_dump_json() == slow.model_dump_json()
        assert repr(fast) == repr(slow)  # same types too (True is not 1 here)
    else:
        assert fast is None  # the full path then gives the reason and message


@pytest.mark.integration
async def test_gateway_stores_a_burst_once_and_acks_every_batch(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    devices = [f"tv-burst-{d}" for d in range(4)]
    want = {(d, s) for d in devices for s in range(1, 31)}
    async with (
        aiomqtt.Client(
            "127.0.0.1", mosquitto.port, identifier=f"dev-{uuid.uuid4().hex[:10]}"
        ) as client,
        Gateway(settings) as gw,
    ):
        await client.subscribe(f"{settings.topics.root}/dev/+/down/ack", qos=1)
        for device_id, seq in sorted(want) + sorted(want)[:20]:  # 20 redeliveries
            payload = codec.encode(batch(device_id, seq, signals=20), compress=True)
            await client.publish(settings.topics.batch(device_id), payload, qos=1)
        acked: set[tuple[str, int]] = set()
        async with asyncio.timeout(30):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                device_id = message.topic.value.split("/")[-3]
                acked |= {(device_id, s) for s in json.loads(message.payload)["acks"]}
                if acked >= want and gw.counters["batches_duplicate"] == 20:
                    break
        assert gw.counters["batches_stored"] == len(want)
        assert gw.counters["signals_stored"] == 20 * len(want)
        assert gw.counters["store_errors"] == 0
    assert acked == want
    store = open_session(settings.data_dir, settings.db)
    try:
        assert store.one("SELECT count(*) AS n FROM batches") == {"n": len(want)}
        assert store.one("SELECT count(*) AS n FROM signals") == {"n": 20 * len(want)}
    finally:
        store.close()
