"""Defects an audit of the durability work found, each with the test that shows it fixed
(real Mosquitto, real SQLite files, the agent as a real process where a device reset is
simulated): big batches, device resets, withdrawal of batches in flight, 503 at the quota."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import sqlite3
import string
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.api.owners import admin_headers
from agent.intake.validate import MAX_ATTRS_BYTES
from agent.runtime import loops
from agent.runtime.agent import Agent
from agent.runtime.memory import MB, PAGE_OUT_EVERY_S, MemoryBudget, rss_bytes, sqlite_cache_kib
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db import migrations
from cloud_gateway.db.devices import aggregate_coverage
from cloud_gateway.db.ingest import store_batch
from cloud_gateway.db.store import Store as GatewayStore
from cloud_gateway.runtime.gateway import Gateway
from protocol.envelopes import Batch
from simulators.brokers import MosquittoProcess, free_port
from simulators.checker import Drops, account
from simulators.faults import AgentProcess
from tests.support.builders import ALL, gateway_db_before
from tests.support.clock import FakeClock
from tests.support.gateway_world import agent_settings, export, gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NO_ANALYTICS = {**ALL, "analytics": False}

ACK_TIMEOUT_S = 30.0
"""Longer than the test takes: a resend happens only when the test moves the clock."""


def big_attrs(rng: random.Random) -> dict[str, Any]:
    """~3.9 KB of attrs that zlib cannot shrink much (random letters): 500 of them are
    ~2 MB of JSON, past the gateway's decompressed bound, and ~1.5 MB zlibbed."""
    letters = string.ascii_letters + string.digits
    return {f"a{i}": "".join(rng.choices(letters, k=240)) for i in range(15)}


async def post(port: int | None, body: Any, data_dir: Path) -> tuple[int, dict[str, Any]]:
    """POST /v1/signals as the admin app of the agent keeping its data in `data_dir`."""
    headers = await asyncio.to_thread(admin_headers, data_dir)
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(f"http://127.0.0.1:{port}/v1/signals", json=body) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_batch_of_big_signals_is_cut_by_size_and_every_signal_reaches_the_gateway(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    rng = random.Random(7)
    async with gateway(tmp_path, mosquitto) as gw:
        settings = agent_settings(
            gw, tmp_path, mosquitto, device="tv-big-0001", uplink={"batch_max_signals": 500}
        )
        async with Agent(settings) as agent:
            assert await agent.wait_connected(20)
            # One signal's attrs are bounded at intake: 400 with the field's path.
            too_big = {"a0": "x" * 256, **{f"b{i}": "y" * 256 for i in range(20)}}
            status, body = await post(
                agent.api_port,
                {"signals": [{"kind": "search"}, {"kind": "x", "attrs": too_big}]},
                settings.data_dir,
            )
            assert status == 400 and body["errors"][0]["loc"] == "signals.1.attrs"
            assert str(MAX_ATTRS_BYTES) in body["errors"][0]["msg"]
            ids: list[str] = []
            for _ in range(5):  # 500 signals wait for consent: then they are cut at once
                status, body = await post(
                    agent.api_port,
                    {"signals": [{"kind": "search", "attrs": big_attrs(rng)} for _ in range(100)]},
                    settings.data_dir,
                )
                assert status == 202, body
                ids += body["ids"]
            await agent.set_consent(ALL)
            assert await agent.drain(timeout=60), agent.status()
            stored = {s["id"] for s in (await export(gw, settings.device_id))["signals"]}
            assert stored == set(ids)
            assert gw.counters["rejected_too_large"] == 0
            assert gw.counters["batches_stored"] >= 8  # ~1.5 MB zlibbed in <= 192 KB batches
            assert agent.counters["batches_resent"] == 0


async def test_a_device_whose_data_dir_is_wiped_starts_a_new_outbox_and_its_signals_are_stored(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    device = "tv-reset-0001"
    settings = GatewaySettings(
        broker=mosquitto.url,
        data_dir=tmp_path / "gw",
        http_port=0,
        topic_root="reset/v1",
        client_id="gw-reset",
        ack_delay_ms=2,
    )
    data_dir = tmp_path / "dev"
    async with Gateway(settings) as gw:
        agent = AgentProcess(
            profile="tv",
            device_id=device,
            broker=mosquitto.url,
            data_dir=data_dir,
            api_port=free_port(),
            trust=gw.trust_path,
            log=tmp_path / "agent.log",
            env={
                "EDGEMART_CONSENT__ANALYTICS": "true",
                "EDGEMART_UPLINK__BATCH_MAX_AGE_S": "0.05",
            },
        )
        accepted: list[str] = []

        async def stored() -> set[str]:
            return {s["id"] for s in (await export(gw, device)).get("signals", [])}

        async def all_stored() -> bool:
            return set(accepted) <= await stored()

        for life in range(2):
            await asyncio.to_thread(agent.start)
            for n in range(3):  # three batches: seq 1, 2, 3 in each life
                status, body = await post(
                    int(agent.api.rsplit(":", 1)[1]),
                    {"signals": [{"kind": "search", "attrs": {"life": life, "n": n}}] * 10},
                    data_dir,
                )
                assert status == 202, body
                accepted.extend(body["ids"])
                await eventually(all_stored, 30.0, f"life {life}, request {n} stored")
            assert agent.stop() == 0, agent.log.read_text()[-2000:]
            shutil.rmtree(data_dir)  # the device is reset: store, seq and outbox id gone
        assert await stored() == set(accepted)
        assert gw.counters["batches_duplicate"] == 0
        with closing(sqlite3.connect(settings.db_path)) as db:
            outboxes = db.execute(
                "SELECT outbox_id, min(seq), count(*) FROM batches WHERE device_id = ?"
                " GROUP BY outbox_id",
                (device,),
            ).fetchall()
        assert len(outboxes) == 2 and all(o[0] and o[1] == 1 for o in outboxes)


def test_the_outbox_migration_keeps_old_batches_deduplicated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    gateway_db_before(
        path,
        migrations.issue3fix_outbox_id_dedupe,
        [
            "INSERT INTO batches (device_id, seq, received_at, sent_at, signals, aggregates,"
            " outcomes, receipts) VALUES ('tv-old-0001', 1, 'x', 'x', 0, 0, 0, '[]')",
            "INSERT INTO aggregates (device_id, seq, window, key, count, seconds)"
            " VALUES ('tv-old-0001', 1, '1h:2026-11-27T00', 'search', 5, 0)",
        ],
    )
    store = GatewayStore(path)
    now = datetime.now(UTC)

    def batch(outbox: str | None, count: int) -> Batch:
        return Batch.model_validate(
            {
                "device_id": "tv-old-0001",
                "seq": 1,
                "sent_at": now,
                "agent_version": "0",
                "aggregates": [{"window": "1h:2026-11-27T00", "key": "search", "count": count}],
                "outbox_id": outbox,
            }
        )

    assert not store_batch(store, "tv-old-0001", batch(None, 5), now)  # a redelivery: once
    assert store_batch(store, "tv-old-0001", batch("b" * 32, 3), now)  # a reset device: new
    assert aggregate_coverage(store, "tv-old-0001") == 5 + 3
    store.close()


async def test_withdrawal_purges_batches_in_flight_and_accounting_closes_when_their_acks_come(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    gw_settings = GatewaySettings(
        broker=own_mosquitto.url,
        data_dir=tmp_path / "gw",
        http_port=0,
        client_id="gw-withdraw",
        ack_delay_ms=2,
    )
    device = "tv-withdraw-01"
    async with Gateway(gw_settings) as gw:
        trust = gw.trust_path
        settings = agent_settings(
            gw,
            tmp_path,
            own_mosquitto,
            device=device,
            uplink={"batch_max_signals": 50, "max_in_flight": 4, "ack_timeout_s": ACK_TIMEOUT_S},
        )
    assert trust.exists()
    clock = FakeClock()  # the ack timeout passes when the test moves the clock
    async with Agent(settings, clock=clock, timer=clock) as agent:
        assert await agent.wait_connected(20)
        await agent.set_consent(ALL)
        ids: list[str] = []
        for _ in range(10):  # the gateway is down: batches are cut and published, no ack
            ids += await agent.accept_signals([{"kind": "search"}] * 50)
        await eventually(lambda: agent.counters["batches_sent"] >= 4, what="batches in flight")
        assert len(await agent.store.call(agent.store.batches.stored)) == 4
        await agent.uplink.step()
        assert agent.counters["batches_resent"] == 0  # unacked, but not yet overdue
        clock.advance(ACK_TIMEOUT_S * 1.5 + 1)  # past the timeout and its jitter
        agent.uplink.poke()  # a moved fake timer wakes no sleeping uplink
        await eventually(lambda: agent.counters["batches_resent"] >= 4, what="overdue: resent")
        await agent.set_consent(NO_ANALYTICS)
        assert await agent.store.call(agent.store.batches.stored) == []  # never sent again
        assert agent.store.depth == 0
        assert agent.status()["accounting"]["withdrawn"] == 500
        resent = agent.counters["batches_resent"]
        clock.advance(ACK_TIMEOUT_S * 3 + 1)  # past the backed-off timeout: nothing is resent
        await agent.uplink.step()
        assert agent.counters["batches_resent"] == resent
        assert agent.uplink.in_flight == 0
        # The gateway returns: its persistent session gets the batches that were published.
        async with Gateway(gw_settings) as gw:
            await eventually(
                lambda: agent.counters["batches_acked"] >= 4, what="late acks of purged batches"
            )
            stored = {s["id"] for s in (await export(gw, device))["signals"]}
            assert len(stored) == 200
            drops = Drops.from_status(agent.status())
            assert drops.withdrawn == 300
            report = account({device: ids}, {device: stored}, {device: drops})
            assert report.ok and report.withdrawn + report.stored == 500, report.line()


async def test_post_signals_answers_503_over_http_in_refuse_mode_and_stores_nothing_of_it(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    async with gateway(tmp_path, mosquitto) as gw:
        settings = agent_settings(
            gw,
            tmp_path,
            mosquitto,
            device="tv-refuse-001",
            budgets={"outbox_full": "refuse", "outbox_max_bytes": 400_000},
        )
        async with Agent(settings) as agent:  # no analytics consent: everything waits
            assert agent.store.outbox_max_bytes < 400_000
            body = {"signals": [{"kind": "search", "attrs": {"q": "z" * 200}}] * 50}
            accepted: list[str] = []
            while True:
                status, answer = await post(agent.api_port, body, settings.data_dir)
                if status != 202:
                    break
                accepted += answer["ids"]
            assert status == 503, answer
            assert answer["errors"][0]["loc"] == "(outbox)"
            assert accepted and agent.status()["accounting"]["refused"] == 50

            def stored_state() -> tuple[int, int]:
                with closing(sqlite3.connect(settings.db_path)) as db:
                    (rows,) = db.execute("SELECT COUNT(*) FROM signals").fetchone()
                    (counted,) = db.execute(
                        "SELECT COALESCE(SUM(count), 0) FROM feature_buckets"
                    ).fetchone()
                return int(rows), int(counted)

            state = stored_state()
            assert state[0] == len(accepted)
            status, answer = await post(agent.api_port, body, settings.data_dir)
            assert status == 503
            # Nothing of a refused request: not in the outbox, not in the feature windows.
            assert stored_state() == state
            assert agent.status()["accounting"]["refused"] == 100
            assert agent.counters["signals_accepted"] == len(accepted)


def test_memory_budget_counts_samples_over_it_and_warns_at_most_every_ten_minutes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = MemoryBudget(budget_mb=100)
    with caplog.at_level(logging.DEBUG, logger="agent.runtime.memory"):
        assert not budget.observe(99 * MB, 0.0)
        assert budget.observe(101 * MB, 1.0)
        assert budget.observe(120 * MB, 2.0)
        assert budget.observe(101 * MB, 601.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and budget.over_count == 3
    assert budget.to_json() == {
        "rss_mb": 101.0,
        "peak_mb": 120.0,
        "budget_mb": 100,
        "over_budget_samples": 3,
    }
    # A process of many agents (simulators, tests): samples recorded, never judged.
    shared = MemoryBudget(budget_mb=1, shared=True)
    assert not shared.observe(500 * MB, 0.0)
    assert shared.over_count == 0 and shared.to_json()["shared_process"] is True
    # Page-outs: the first at once, then at most one per PAGE_OUT_EVERY_S; never shared.
    assert budget.page_out_due(1000.0) and not budget.page_out_due(1000.0 + 599.0)
    assert budget.page_out_due(1000.0 + PAGE_OUT_EVERY_S)
    assert not shared.page_out_due(0.0)
    # Once start-up has settled: one more, whatever the last one's age; then the rate again.
    assert budget.settle_due(1000.0 + PAGE_OUT_EVERY_S + 1.0)
    assert not budget.settle_due(1000.0 + PAGE_OUT_EVERY_S + 2.0)
    assert not budget.page_out_due(1000.0 + PAGE_OUT_EVERY_S + 3.0)
    assert not shared.settle_due(0.0)
    assert sqlite_cache_kib(8) == 256 and sqlite_cache_kib(144) == 2048
    assert (
        abs(
            rss_bytes()
            - int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) * 1024
        )
        < 8 * MB
    )


async def test_an_agent_over_its_memory_budget_reports_it_and_sheds_caches(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    async with gateway(tmp_path, mosquitto) as gw:
        settings = agent_settings(
            gw, tmp_path, mosquitto, device="tv-memory-001", budgets={"memory_mb": 16}
        )
        async with Agent(settings, owns_process=True) as agent:
            # Paged out once at start; the sample at start was over, but one page-out per
            # PAGE_OUT_EVERY_S is all an agent that stays over its budget does.
            assert agent.metrics.counters["memory_page_outs"] == 1
            agent.metrics.observe_decision(1.0)
            assert await agent.check_memory()  # this test process is far over 16 MB
            assert not agent.decision_ms
            assert agent.metrics.counters["memory_page_outs"] == 1
            assert agent.memory.paged_out_at is not None
            agent.memory.paged_out_at -= PAGE_OUT_EVERY_S  # ten minutes on
            assert await agent.check_memory()
            assert agent.metrics.counters["memory_page_outs"] == 2
            headers = await asyncio.to_thread(admin_headers, settings.data_dir)
            async with aiohttp.ClientSession(headers=headers) as http:
                base = f"http://127.0.0.1:{agent.api_port}"
                async with http.get(f"{base}/v1/status") as resp:
                    memory = (await resp.json())["memory"]
                async with http.get(f"{base}/metrics") as resp:
                    metrics = await resp.text()
            assert memory["budget_mb"] == 16 and memory["rss_mb"] > 16
            assert memory["over_budget_samples"] >= 2  # at start, and now
            assert "edgemart_agent_memory_budget_bytes 1.6777216e+07" in metrics
            assert "edgemart_agent_rss_bytes " in metrics
            assert "edgemart_agent_memory_over_budget_total" in metrics


async def test_once_start_up_has_settled_the_agent_pages_out_once_more(
    tmp_path: Path, mosquitto: MosquittoProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pairing, the broker session and the first catalog come after start: one more page-out
    hands back what only they touched (`memory.SETTLE_S`, shortened here), then the rate."""
    monkeypatch.setattr(loops, "SETTLE_S", 0.2)
    async with gateway(tmp_path, mosquitto) as gw:
        settings = agent_settings(gw, tmp_path, mosquitto, device="tv-settle-001")
        async with Agent(settings, owns_process=True) as agent:
            assert agent.metrics.counters["memory_page_outs"] == 1  # at start
            await eventually(lambda: agent.metrics.counters["memory_page_outs"] == 2, 10.0)
            assert agent.memory.settled
            await agent.check_memory()  # over its budget or not: not again within the rate
            assert agent.metrics.counters["memory_page_outs"] == 2


@pytest.mark.parametrize("profile", ["tv", "phone"])
async def test_a_fresh_agent_process_is_under_its_profiles_memory_budget(
    tmp_path: Path, mosquitto: MosquittoProcess, profile: str
) -> None:
    async with gateway(tmp_path, mosquitto) as gw:
        port = free_port()
        agent = AgentProcess(
            profile=profile,
            device_id=f"{profile}-mem-0001",
            broker=mosquitto.url,
            data_dir=tmp_path / "dev",
            api_port=port,
            trust=gw.trust_path,
            log=tmp_path / "agent.log",
            env={"EDGEMART_CONSENT__ANALYTICS": "true"},
        )
        await asyncio.to_thread(agent.start)
        try:
            for n in range(20):
                status, _ = await post(
                    port, {"signals": [{"kind": "search", "attrs": {"n": n}}] * 50}, agent.data_dir
                )
                assert status == 202
            headers = await asyncio.to_thread(admin_headers, agent.data_dir)
            async with (
                aiohttp.ClientSession(headers=headers) as http,
                http.get(f"http://127.0.0.1:{port}/v1/status") as resp,
            ):
                status = await resp.json()
        finally:
            assert agent.stop() == 0
        memory = status["memory"]
        assert 50 < memory["rss_mb"] < memory["budget_mb"], memory
        # Start-up's library pages were offered back. The kernel keeps a page another process
        # maps too: once this test runner (or another test worker beside it) has loaded the
        # same libraries, the agent's start-up pages are shared with it and little or nothing
        # comes back (measured 0-280 KB), while a device alone gives back ~30 MB:
        # test_page_out_hands_clean_file_pages_back_and_keeps_written_ones checks the
        # mechanism on a file of its own.
        counters = status["counters"]
        assert counters["memory_page_outs"] >= 1, counters


def test_page_out_hands_clean_file_pages_back_and_keeps_written_ones(tmp_path: Path) -> None:
    """In a process of its own: pages another process maps are never handed back."""
    script = """
import ctypes, json, mmap, os, sys, tempfile
from agent.runtime.memory import page_out_clean_file_pages

def resident(path):
    out, current = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:
            current = len(head) == 6 and head[5] == path
        elif current and line.startswith("Rss:"):
            out += int(head[1]) * 1024
    return out

size = 16 * 1024 * 1024
views, paths = {}, {}
for name, access in (("clean", mmap.ACCESS_READ), ("written", mmap.ACCESS_COPY)):
    fd, paths[name] = tempfile.mkstemp(dir=sys.argv[1])
    os.write(fd, os.urandom(size))
    views[name] = mmap.mmap(fd, size, access=access)
    for offset in range(0, size, mmap.PAGESIZE):
        if access == mmap.ACCESS_COPY:
            views[name][offset] = 1  # a private copy of the page: dirty, anonymous
        else:
            views[name][offset]
before = {name: resident(path) for name, path in paths.items()}
freed = page_out_clean_file_pages()
after = {name: resident(path) for name, path in paths.items()}
print(json.dumps({"before": before, "after": after, "freed": freed}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    result = json.loads(out)
    assert result["before"]["clean"] >= 15 * MB and result["before"]["written"] >= 15 * MB
    assert result["after"]["clean"] < MB, result  # handed back
    assert result["after"]["written"] >= 15 * MB, result  # dirty: kept
    assert result["freed"] >= 15 * MB, result
