"""`gateway_births_per_s`: a storm of device births (a broker restart) through the gateway's
ingest (`Ingestor.feed` + its group-commit loop) into a SQLite file, grouped (`GROUP_MAX`
messages per transaction) vs one transaction per birth (`group_max=1`, what every birth cost
before issue 12), same run, same births."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.record import Record
from cloud_gateway.db.store import Database
from cloud_gateway.ingest.service import GROUP_MAX, AckBatcher, Ingestor
from protocol import codec
from protocol.envelopes import State
from protocol.ids import utcnow
from protocol.signing import Signer
from protocol.topics import Topics

BIRTHS = 3000
TOPICS = Topics("edgemart/v1")


def _births(prefix: str) -> list[tuple[str, bytes]]:
    now = utcnow()
    out = []
    for d in range(BIRTHS):
        device = f"{prefix}-{d:05d}"
        state = State(
            device_id=device,
            status="online",
            at=now,
            profile="tv",
            agent_version="0.1.0",
            model_version=1,
            cohorts=["tv-all"],
        )
        out.append((TOPICS.state(device), codec.encode(state)))
    return out


async def _births_per_s(path: Path, group_max: int) -> float:
    db = await Database(path).open()
    counters: Counter[str] = Counter()
    acks = AckBatcher(TOPICS, lambda _t, _p: None, counters, 0, signer=Signer.generate("bench"))
    ingestor = Ingestor(TOPICS, db, acks=acks, counters=counters, group_max=group_max)
    births = _births(f"tv-g{group_max}")
    try:
        runner = asyncio.create_task(ingestor.run(), name="bench-ingest-commit")
        started = time.perf_counter()
        for topic, payload in births:
            await ingestor.feed(topic, payload)
        await ingestor.commit_waiting()
        elapsed = time.perf_counter() - started
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    finally:
        await db.close()
    if counters["states_stored"] != BIRTHS:
        raise RuntimeError(f"stored {counters['states_stored']} of {BIRTHS} births")
    return BIRTHS / elapsed


def run() -> list[Record]:
    with tempfile.TemporaryDirectory(prefix="edgemart-storm-") as tmp:
        single = asyncio.run(_births_per_s(Path(tmp) / "single.db", 1))
        grouped = asyncio.run(_births_per_s(Path(tmp) / "grouped.db", GROUP_MAX))
    return [
        Record(
            "gateway_births_per_s",
            grouped,
            "births/s",
            "one transaction per birth (group_max=1), same ingest path",
            single,
            f"{BIRTHS:,} retained births fed to the Ingestor, SQLite (WAL, synchronous=FULL),"
            f" groups of up to {GROUP_MAX}",
        )
    ]
