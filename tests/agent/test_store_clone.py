"""A store copied to another device (a cloned image, a restored backup) takes a new outbox id
for the batches it cuts from then on, so the gateway (which de-duplicates by outbox id and
seq) never takes the copy's batches for the original's, and an ack echoing one outbox id
deletes only the batches cut under it. Batches cut before the copy are the same in both and
acked in either. The same store reopened in place keeps its id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from agent.store.core import Store
from agent.store.rows import NewSignal


def build(seq: int, sigs: list[dict[str, Any]], *rest: Any) -> bytes:
    return json.dumps({"seq": seq, "ids": [s["id"] for s in sigs]}).encode()


def rows(tag: str, n: int = 3) -> list[NewSignal]:
    return [
        NewSignal(f"{tag}-{i}", "search", "2026-12-06T07:00:00.000Z", "{}", 50, 4e9)
        for i in range(n)
    ]


async def opened(path: Path) -> Store:
    store = Store(path, durability="normal", clock=lambda: 1000.0)
    await store.open()
    return store


async def cut(store: Store) -> int:
    batch = await store.call(
        lambda: store.batches.cut(
            max_signals=10, max_outcomes=10, max_receipts=10, include_data=True, build=build
        )
    )
    assert batch is not None
    return batch.seq


async def test_a_copied_store_takes_a_new_outbox_id_and_acks_stay_with_their_outbox(
    tmp_path: Path,
) -> None:
    original = await opened(tmp_path / "a" / "agent.sqlite3")
    await original.call(original.outbox.accept, rows("before"), [])
    shared_seq = await cut(original)  # cut before the image was cloned: in both copies
    first_id = original.outbox_id
    await original.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the cloned image

    a = await opened(tmp_path / "a" / "agent.sqlite3")
    b = await opened(tmp_path / "b" / "agent.sqlite3")
    try:
        assert a.outbox_id == first_id and not a.rotated  # reopened in place
        assert b.outbox_id != first_id and b.rotated
        assert b.drops["outbox_rotations"] == 1
        await a.call(a.outbox.accept, rows("a"), [])
        await b.call(b.outbox.accept, rows("b"), [])
        seq_a, seq_b = await cut(a), await cut(b)
        assert seq_a == seq_b  # the same seq, under two outbox ids
        # the gateway acks a's batch: b's batch of the same seq stays
        done_b = await b.call(b.batches.ack, [seq_a], a.outbox_id)
        assert done_b.seqs == () and b.depth == 6
        done_a = await a.call(a.batches.ack, [seq_a], a.outbox_id)
        assert done_a.seqs == (seq_a,) and a.depth == 3
        # the batch cut before the copy is acked in either (under the first id)
        for store in (a, b):
            done = await store.call(store.batches.ack, [shared_seq], first_id)
            assert done.seqs == (shared_seq,)
        assert a.depth == 0 and b.depth == 3
        done_b = await b.call(b.batches.ack, [seq_b], b.outbox_id)
        assert b.depth == 0
    finally:
        await a.close()
        await b.close()
    again = await opened(tmp_path / "b" / "agent.sqlite3")
    try:
        assert not again.rotated and again.outbox_id == b.outbox_id
    finally:
        await again.close()
