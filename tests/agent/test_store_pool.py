"""Many agents' stores on one shared `StorePool`: a few threads instead of one per store,
each store's calls still one at a time and in the order they came, each on its own file
(before: one thread per device, 409 threads for 400 devices, half the CPU in the kernel)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from agent.store.core import Store
from agent.store.thread import StorePool

STORES = 60
CALLS = 20


async def test_many_stores_share_a_few_threads_and_keep_their_order(tmp_path: Path) -> None:
    pool = StorePool(threads=3)
    stores = [Store(tmp_path / f"d{i}" / "agent.db", pool=pool) for i in range(STORES)]
    before = threading.active_count()
    try:
        for store in stores:
            await store.open()
        seen: dict[int, list[int]] = {i: [] for i in range(STORES)}
        threads: set[str] = set()

        def write(i: int, n: int, store: Store) -> None:
            threads.add(threading.current_thread().name)
            seen[i].append(n)
            with store.thread.tx() as tx:
                tx.execute("CREATE TABLE IF NOT EXISTS pool_probe(n INTEGER)")
                tx.execute("INSERT INTO pool_probe VALUES (?)", (n,))

        await asyncio.gather(
            *(
                store.call(write, i, n, store)
                for n in range(CALLS)
                for i, store in enumerate(stores)
            )
        )
        assert all(order == list(range(CALLS)) for order in seen.values())  # in order
        assert len(threads) <= 3 and all(t.startswith("store-pool") for t in threads)
        assert threading.active_count() - before <= 3  # not one per store

        def count(store: Store) -> int:
            return int(store.thread.conn().execute("SELECT count(*) FROM pool_probe").fetchone()[0])

        assert [await s.call(count, s) for s in stores] == [CALLS] * STORES  # each its own file
    finally:
        for store in stores:
            await store.close()
        await asyncio.to_thread(pool.shutdown)


async def test_a_cancelled_call_still_has_the_connection_to_itself_until_it_ends(
    tmp_path: Path,
) -> None:
    """A caller cancelled mid-call (a request timed out, an agent stopping) leaves its call
    running on a pool thread: the store's next call waits for it instead of using the same
    SQLite connection from a second thread at once (which can crash the process)."""
    pool = StorePool(threads=2)
    store = Store(tmp_path / "agent.db", pool=pool)
    await store.open()
    running: list[str] = []
    overlaps: list[str] = []

    def slow() -> None:
        running.append("slow")
        time.sleep(0.3)
        running.remove("slow")

    def quick() -> None:
        if running:
            overlaps.append(f"quick ran beside {running}")

    try:
        task = asyncio.create_task(store.call(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        await store.call(quick)
        assert overlaps == []
    finally:
        await store.close()
        await asyncio.to_thread(pool.shutdown)
