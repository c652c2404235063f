"""The thin device (`ranking = "thin"`, the speaker): its process's RSS, and its decision through
the household's coordinator.

* `thin_agent_rss_mb`: a real `edgemart agent run --profile speaker` (thin: no model, no
  onnxruntime) after `BENCH_THIN_SECONDS` (default 120) at 100 signals/s over its local API,
  acked by a gateway through Mosquitto, vs the full agent (`--profile tv`) run the same way in
  the same run, one after the other (`bench.rss_bench._run`). Goal: under 48 MB, ratio <= 0.45.
* `household_decision_p99_us`: one thin decision (eligibility, the rank request over loopback
  HTTP to a coordinator process, `agent.decide.thin.decide_offers` on its scores: the speaker's
  own numpy-free path) vs the same decision made locally with the model (baseline),
  interleaved in the same run. The coordinator here is
  `python -m simulators.rank_server`: a process of its own with the shipped model, scoring
  through the agent's real code (`agent.decide.remote_rank.rank_for`), standing in for the
  coordinator's endpoint of `agent.household` until that lands on this branch.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from agent.decide.catalog import build_catalog
from agent.decide.ranking import Consent, decide_catalog
from agent.decide.thin import decide_offers, rank_request
from agent.features.context import user_context
from agent.model.scoring import load_default_model
from bench.record import Record, percentiles
from bench.rss_bench import _run as run_agent_under_load
from protocol.envelopes import Offer
from protocol.ids import utcnow
from simulators.brokers import free_port
from simulators.rank_server import HttpRanker
from simulators.world import make_world

SURFACE = "speaker_voice"
TZ = "Asia/Shanghai"
ROUNDS = 600
CANDIDATES = 64
"""The synthetic world's catalog: every offer showable on the speaker."""


def _rss() -> tuple[float, float, float, float]:
    """(thin RSS at the end, its peak, full RSS at the end, its peak), MB."""
    seconds = float(os.environ.get("BENCH_THIN_SECONDS", "120"))
    with tempfile.TemporaryDirectory() as tmp:
        thin_end, _, thin_peak, _ = run_agent_under_load(seconds, Path(tmp), profile="speaker")
    with tempfile.TemporaryDirectory() as tmp:
        full_end, _, full_peak, _ = run_agent_under_load(seconds, Path(tmp), profile="tv")
    return thin_end, thin_peak, full_end, full_peak


def _offers() -> list[Offer]:
    now = utcnow()
    world = make_world(5, households=2, offers=CANDIDATES)
    return [
        Offer.model_validate(
            {
                **r,
                "surfaces": [SURFACE],
                "starts_at": now - timedelta(hours=1),
                "expires_at": now + timedelta(days=1),
            }
        )
        for r in world.catalog.records()
    ]


async def _decisions(port: int) -> tuple[list[float], list[float], int]:
    """Interleaved (thin, local) decision times in µs, and the thin decisions that got scores."""
    model = await asyncio.to_thread(load_default_model)
    offers = _offers()
    catalog = build_catalog(offers, 1)
    consent = Consent(analytics=True, personalization=True, marketing=True)
    ranker = HttpRanker(f"http://127.0.0.1:{port}", timeout_s=5.0)
    thin: list[float] = []
    local: list[float] = []
    scored = 0
    try:
        for i in range(ROUNDS + 20):
            now = utcnow()
            ctx = user_context(now, "speaker", TZ, None)
            started = time.perf_counter()
            request = rank_request(
                catalog.offers,
                device_id="speaker-0001",
                profile="speaker",
                surface=SURFACE,
                now=now,
                local_hour=ctx.local_hour,
                local_weekday=ctx.local_weekday,
                personalized=True,
            )
            assert request is not None
            result = await ranker.rank(request)
            remote = decide_offers(offers, ctx, SURFACE, 3, now, consent, remote=result)
            thin_us = (time.perf_counter() - started) * 1e6
            started = time.perf_counter()
            decide_catalog(model, catalog, ctx, SURFACE, 3, now, consent)
            local_us = (time.perf_counter() - started) * 1e6
            if i >= 20:  # warm-up: the connection, the session's first runs
                thin.append(thin_us)
                local.append(local_us)
                scored += result is not None and bool(remote.ranked)
    finally:
        await ranker.close()
    return thin, local, scored


def _coordinator(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.rank_server", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"rank server did not start: {line!r}")
    return proc


def run() -> list[Record]:
    thin_end, thin_peak, full_end, full_peak = _rss()
    port = free_port()
    proc = _coordinator(port)
    try:
        thin, local, scored = asyncio.run(_decisions(port))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    thin_p50, thin_p99 = percentiles(thin, 0.5, 0.99)
    local_p50, local_p99 = percentiles(local, 0.5, 0.99)
    seconds = os.environ.get("BENCH_THIN_SECONDS", "120")
    return [
        Record(
            "thin_agent_rss_mb",
            thin_end,
            "MB",
            "full agent RSS (edgemart agent run --profile tv), same run",
            full_end,
            f"`edgemart agent run --profile speaker` (ranking = thin, no onnxruntime) after"
            f" {seconds} s at 100 signals/s via Mosquitto + gateway; peaks {thin_peak:.1f} vs"
            f" {full_peak:.1f} MB; goals: under 48 MB, ratio <= 0.45",
        ),
        Record(
            "household_decision_p99_us",
            thin_p99,
            "µs",
            "the same decision made locally with the model (p99), same run",
            local_p99,
            f"{len(thin)} thin decisions of {CANDIDATES} candidates through a coordinator"
            f" process over loopback HTTP (simulators.rank_server: the agent's real scoring"
            f" code, standing in for agent.household's endpoint), {scored} scored by it;"
            f" p50 {thin_p50:.0f} vs {local_p50:.0f} µs",
        ),
    ]
