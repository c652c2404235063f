"""An I/O error or a full disk at every write of the outbox, one at a time (SQLite's own test
practice): the store's connection is a `sqlite3.Connection` that fails its k-th write
statement (INSERT, UPDATE, DELETE, COMMIT) with SQLITE_IOERR or SQLITE_FULL, for every k of a
scenario (accept, cut, mark sent, ack, expire, quarantine). After each run, with the caller
retrying as the agent does: every accepted signal is held or acknowledged exactly once, no
row points at a batch that does not exist, and the counters the agent reports equal what
the database holds. Why a connection subclass and not a tmpfs: it reaches every statement,
deterministically, in the fast tier; `tests/faults/test_disk_full_tmpfs.py` is the real disk."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from agent.errors import DiskFull, StoreError
from agent.store.core import Store
from agent.store.rows import Counters, NewSignal

T = TypeVar("T")
WRITES = ("INSERT", "UPDATE", "DELETE", "COMMIT", "REPLACE")
ERRORS = {"io": (10, "disk I/O error"), "full": (13, "database or disk is full")}


class FaultyConnection(sqlite3.Connection):
    """Fails write number `fail_at` (counted from 1 since `arm`) once, with `error`."""

    writes: ClassVar[int] = 0
    fail_at: ClassVar[int | None] = None
    error: ClassVar[tuple[int, str]] = ERRORS["io"]

    @classmethod
    def arm(cls, fail_at: int | None, error: tuple[int, str]) -> None:
        cls.writes, cls.fail_at, cls.error = 0, fail_at, error

    def _check(self, sql: str) -> None:
        if not sql.lstrip().upper().startswith(WRITES):
            return
        cls = type(self)
        cls.writes += 1
        if cls.writes == cls.fail_at:
            code, text = cls.error
            exc = sqlite3.OperationalError(text)
            exc.sqlite_errorcode = code  # what SQLite sets on a real failure
            raise exc

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self._check(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        self._check(sql)
        return super().executemany(sql, parameters)


def signals(tag: int, n: int = 4) -> list[NewSignal]:
    return [
        NewSignal(f"s{tag}-{i}", "search", "2026-12-06T07:00:00.000Z", '{"q":1}', 50, 4e9)
        for i in range(n)
    ] + (
        [NewSignal(f"bad{tag}", "search", "2026-12-06T07:00:00.000Z", "{x", 99, 4e9)]
        if tag == 1
        else []
    )


def build(seq: int, sigs: list[dict[str, Any]], *rest: Any) -> bytes:
    return json.dumps({"seq": seq, "ids": [s["id"] for s in sigs]}).encode()


async def retried(store: Store, fn: Callable[..., T], *args: Any) -> T:
    """What the agent does with a store call that failed: try again (the fault is once; a
    full disk is left once the maintenance loop sees room)."""
    for attempt in itertools.count():
        try:
            return await store.call(fn, *args)
        except DiskFull:
            if attempt >= 3:
                raise
            await store.call(store.recheck_space)  # the maintenance loop's look: room again
        except StoreError:
            if attempt >= 3:
                raise
    raise AssertionError("unreachable")


async def scenario(store: Store) -> tuple[set[str], set[str]]:
    """Accept 3 requests, cut and ack batches, expire: (accepted ids, acked ids)."""
    accepted: set[str] = set()
    acked: set[str] = set()
    for tag in range(3):
        rows = signals(tag)
        await retried(store, store.outbox.accept, rows, [])
        accepted |= {r.id for r in rows}
    for _ in range(3):
        cut = await retried(store, lambda: store.batches.cut(
            max_signals=5, max_outcomes=10, max_receipts=10, include_data=True, build=build
        ))  # fmt: skip
        if cut is None:
            break
        await retried(store, store.batches.mark_sent, cut.seq, len(cut.payload), "2026-12-06")
        result = await retried(store, store.batches.ack, [cut.seq])
        if cut.seq in result.seqs:
            acked |= set(json.loads(cut.payload)["ids"])
    await retried(store, store.outbox.expire)
    return accepted, acked


async def check(store: Store, accepted: set[str], acked: set[str]) -> None:
    def read() -> tuple[list[str], int, Counters]:
        db = store.thread.conn()
        held = [r[0] for r in db.execute("SELECT id FROM signals")]
        (orphans,) = db.execute(
            "SELECT COUNT(*) FROM signals WHERE batch_seq IS NOT NULL"
            " AND batch_seq NOT IN (SELECT seq FROM batches)"
        ).fetchone()
        fresh = Counters(store.counters.outbox_max_bytes)
        fresh.recount(db)
        return held, int(orphans), fresh

    held, orphans, fresh = await store.call(read)
    quarantined = {r["id"] for r in await store.call(store.quarantine.rows, 100)}
    assert orphans == 0
    assert len(held) == len(set(held))
    assert not set(held) & acked  # acknowledged rows left the device
    assert set(held) | acked | quarantined == accepted  # nothing lost
    assert not acked & quarantined
    assert store.counters.signal_rows == fresh.signal_rows
    assert store.counters.outbox_bytes == fresh.outbox_bytes
    assert store.counters.drops == fresh.drops


async def run(tmp_path: Path, fail_at: int | None, error: tuple[int, str]) -> int:
    store = Store(
        tmp_path / "agent.sqlite3",
        durability="normal",  # fewer fsyncs: the faults, not the disk, are under test
        clock=lambda: 1000.0,
        connection=FaultyConnection,
    )
    FaultyConnection.arm(None, error)
    await store.open()
    FaultyConnection.arm(fail_at, error)
    try:
        accepted, acked = await scenario(store)
        writes = FaultyConnection.writes
        FaultyConnection.arm(None, error)
        await check(store, accepted, acked)
    finally:
        await store.close()
    return writes


@pytest.mark.parametrize("kind", ["io", "full"])
async def test_a_fault_at_every_write_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, kind: str
) -> None:
    error = ERRORS[kind]
    total = await run(tmp_path / "clean", None, error)
    assert total > 20  # the scenario writes; each write is failed once below
    for k in range(1, total + 1):
        await run(tmp_path / f"k{k}", k, error)
