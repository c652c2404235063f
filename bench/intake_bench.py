"""Intake and aggregate wire figures: `intake_events_per_s` (in-process and over the local
HTTP API, batches of 100) vs raw sqlite3 `executemany` of the same rows with the same
pragmas; `wire_bytes_per_signal_aggregate` vs one JSON message per event."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

import firmware_profiles
from agent.api.owners import admin_headers
from agent.config import load_settings
from agent.intake.aggregates import hit, merge_hits
from agent.runtime.agent import Agent
from bench.record import Record
from protocol import codec
from protocol.envelopes import Aggregate, Batch, TrustFile
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from simulators.brokers import free_port
from simulators.world import make_world, usage_signals

BATCH = 100
ROUNDS = 60  # 6,000 signals per measurement
REPEATS = 3


def _script(n: int, profile: str = "tv") -> list[dict[str, Any]]:
    world = make_world(3, households=4)
    return usage_signals(world.persona(0), profile, np.random.default_rng(3), n)


def _baseline(rows: list[list[tuple[Any, ...]]], path: Path) -> float:
    """Raw sqlite3: the same rows, same table shape and pragmas, one transaction per 100."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE signals (id TEXT PRIMARY KEY, kind TEXT NOT NULL, at TEXT NOT NULL,"
        " attrs TEXT NOT NULL, priority INTEGER NOT NULL, expires_at REAL NOT NULL,"
        " created REAL NOT NULL, size INTEGER NOT NULL, batch_seq INTEGER)"
    )
    db.execute("CREATE INDEX signals_batch ON signals(batch_seq)")
    db.execute("CREATE INDEX signals_pending ON signals(created, id) WHERE batch_seq IS NULL")
    db.execute("CREATE INDEX signals_evict ON signals(priority, created) WHERE batch_seq IS NULL")
    start = time.perf_counter()
    for chunk in rows:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO signals VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)", chunk)
        db.execute("COMMIT")
    took = time.perf_counter() - start
    db.close()
    return len(rows) * BATCH / took


async def _agent_rates(tmp: Path, script: list[dict[str, Any]]) -> tuple[float, float]:
    trust = tmp / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[Signer.generate("k1").public])))
    settings = load_settings(
        profile="tv",
        device_id="tv-bench-0001",
        broker=f"mqtt://127.0.0.1:{free_port()}",  # nobody there: intake does not need it
        data_dir=tmp / "agent",
        api_port=0,
        trust=trust,
        overrides={"consent": {"analytics": True}, "budgets": {"outbox_max_bytes": 1 << 30}},
        environ={},
    )
    chunks = [script[i * BATCH : (i + 1) * BATCH] for i in range(ROUNDS)]
    async with Agent(settings) as agent:
        start = time.perf_counter()
        for chunk in chunks:
            await agent.accept_signals(chunk)
        in_process = ROUNDS * BATCH / (time.perf_counter() - start)
        url = f"http://127.0.0.1:{agent.api_port}/v1/signals"
        headers = await asyncio.to_thread(admin_headers, settings.data_dir)
        async with aiohttp.ClientSession(headers=headers) as http:
            start = time.perf_counter()
            for chunk in chunks:
                async with http.post(url, json={"signals": chunk}) as resp:
                    assert resp.status == 202
            over_http = ROUNDS * BATCH / (time.perf_counter() - start)
    return in_process, over_http


def _intake() -> list[Record]:
    script = _script(ROUNDS * BATCH)
    now = time.time()
    at = format_time(utcnow())
    rows = [
        [
            (
                new_id(),
                s["kind"],
                at,
                json.dumps(s["attrs"], separators=(",", ":")),
                50,
                now + 86400,
                now,
                200,
            )
            for s in script[i * BATCH : (i + 1) * BATCH]
        ]
        for i in range(ROUNDS)
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # The same statistic on both sides, interleaved: best of REPEATS fresh runs each.
        bases: list[float] = []
        agents: list[tuple[float, float]] = []
        for i in range(REPEATS):
            bases.append(_baseline(rows, tmp / f"raw{i}.sqlite3"))
            (tmp / f"run{i}").mkdir()
            agents.append(asyncio.run(_agent_rates(tmp / f"run{i}", script)))
        base = max(bases)
        in_process = max(a[0] for a in agents)
        over_http = max(a[1] for a in agents)
    note = (
        f"{ROUNDS}x{BATCH} scripted TV signals; WAL, synchronous=FULL, one commit per 100"
        f" (validation, feature windows and quota included); best of {REPEATS} fresh runs"
        " each side, interleaved"
    )
    return [
        Record("intake_events_per_s", in_process, "signals/s", "sqlite3 executemany", base, note),
        Record(
            "intake_events_per_s_http",
            over_http,
            "signals/s",
            "sqlite3 executemany",
            base,
            "POST /v1/signals in batches of 100 over loopback, client in the same process",
        ),
    ]


def _wire_aggregate(interval: int | None = None) -> Record:
    """One hour of phone usage, `per_hour` signals spread evenly, cumulative snapshots of
    the changed rows every `interval` seconds (zlib when it saves bytes)."""
    per_hour = 600
    if interval is None:  # the phone profile's own cadence
        with firmware_profiles.profile_path("phone").open("rb") as handle:
            interval = int(tomllib.load(handle)["uplink"]["batch_max_age_s"])
    script = _script(per_hour, "phone")
    hour = 3600 * (int(time.time()) // 3600)
    total = 0
    counts: dict[tuple[str, str], tuple[int, float]] = {}
    for seq, start in enumerate(range(0, 3600, interval), start=1):
        window = script[start * per_hour // 3600 : (start + interval) * per_hour // 3600]
        changed = merge_hits(hit(s["kind"], s["attrs"], hour + start, 3600) for s in window)
        for key, (n, secs) in changed.items():
            old = counts.get(key, (0, 0.0))
            counts[key] = (old[0] + n, old[1] + secs)
        batch = Batch(
            device_id="phone-0001",
            seq=seq,
            sent_at=utcnow(),
            agent_version="0.1.0",
            model_version=1,
            aggregates=[
                Aggregate(window=w, key=k, count=counts[(w, k)][0], seconds=counts[(w, k)][1])
                for (w, k) in changed
            ],
        )
        total += len(codec.encode(batch, compress=None))
    per_event = sum(
        len(
            json.dumps(
                {
                    "device_id": "phone-0001",
                    "sent_at": format_time(utcnow()),
                    "agent_version": "0.1.0",
                    "id": new_id(),
                    "kind": s["kind"],
                    "at": format_time(utcnow()),
                    "attrs": s["attrs"],
                }
            ).encode()
        )
        for s in script
    ) / len(script)
    return Record(
        "wire_bytes_per_signal_aggregate",
        total / per_hour,
        "bytes/signal",
        "one JSON message per event",
        per_event,
        f"an hour of scripted phone usage ({per_hour} signals), hourly window, cumulative"
        f" snapshots of changed rows every {interval} s (phone profile); payload bytes only",
    )


def run() -> list[Record]:
    return [*_intake(), _wire_aggregate()]
