"""On-device decision latency for 500 candidates vs raw `session.run`, and vs cloud scoring.

* `decision_latency_p50_us` / `_p99_us`: one whole decision as the agent makes it (context from
  the feature windows, eligibility and cap masks, holdout, tensor, `session.run`, stable sort,
  diversity, reasons) on the held catalog's columns, against a raw `session.run` on the same
  prepared tensor, interleaved in the same run.
* `decision_local_vs_cloud`: the same decision, asked of a cloud-scoring service over loopback
  HTTP (a real aiohttp server on 127.0.0.1 running the same ranking code, in its own thread and
  event loop) — what the device would wait for if scoring stayed on a server next door.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from agent.decide.catalog import Catalog, build_catalog
from agent.decide.policy import CapCounts, CapLimits, QuietWindow
from agent.decide.ranking import Consent, Situation, decide_catalog
from agent.features.windows import FeatureWindows
from agent.model.inputs import prepare_inputs
from agent.model.scoring import Model, load_default_model
from bench.record import Record, percentiles
from protocol.envelopes import Offer
from protocol.ids import utcnow
from simulators.world import make_world, usage_signals

CANDIDATES = 500
ROUNDS = 3000
HTTP_ROUNDS = 600
SURFACE = "tv_home_banner"
TZ = "Asia/Shanghai"
DEVICE = "tv-0001"


def _offers(n: int) -> list[Offer]:
    world = make_world(5, households=2, offers=n)
    now = utcnow()
    return [
        Offer.model_validate(
            {
                **dict(r.items()),
                "campaign_id": f"c{i % 60}",
                "surfaces": [SURFACE],
                "starts_at": now - timedelta(hours=1),
                "expires_at": now + timedelta(days=1),
                "holdout": 0.1 if i % 60 == 7 else 0.0,
                "caps": {"per_day": 3} if i % 5 == 0 else {},
            }
        )
        for i, r in enumerate(world.catalog.records())
    ]


class _Device:
    """What one decision needs, built once: model, catalog columns, windows, policy state."""

    def __init__(self) -> None:
        self.model: Model = load_default_model()
        self.catalog: Catalog = build_catalog(_offers(CANDIDATES), 1)
        self.now = utcnow()
        self.windows = FeatureWindows()
        world = make_world(5, households=2)
        for s in usage_signals(world.persona(0), "tv", np.random.default_rng(1), 300):
            self.windows.observe(s["kind"], s["attrs"], self.now - timedelta(minutes=30))
        self.consent = Consent(analytics=True, personalization=True, marketing=True)
        caps = CapCounts(day=1)
        for i, offer in enumerate(self.catalog.offers[:40]):
            caps.add(offer.id, offer.campaign_id, SURFACE, 1, n=1 + i % 4)
        night = QuietWindow(2 * 60, 3 * 60)  # checked on every decision; not in force at noon
        self.situation = Situation(
            DEVICE, caps, CapLimits(campaign_per_day=20, global_per_day=10_000), (night,)
        )

    def decide(self) -> list[str]:
        ctx = self.windows.context(self.now, "tv", TZ, True)
        decision = decide_catalog(
            self.model,
            self.catalog,
            ctx,
            SURFACE,
            3,
            self.now,
            self.consent,
            max_candidates=CANDIDATES,
            situation=self.situation,
        )
        return [r.offer.id for r in decision.ranked]


def _latency(device: _Device) -> list[Record]:
    model = device.model
    ctx = device.windows.context(device.now, "tv", TZ, True)
    rows = np.arange(len(device.catalog))
    feed = {model.spec.input_name: prepare_inputs(model.spec, device.catalog).matrix(rows, ctx)}
    outputs = [model.spec.output_name]
    session = model.session
    full: list[float] = []
    raw: list[float] = []
    for _ in range(100):  # warm both paths
        session.run(outputs, feed)
        device.decide()
    for _ in range(ROUNDS):  # interleaved, so both see the same machine
        t0 = time.perf_counter()
        session.run(outputs, feed)
        t1 = time.perf_counter()
        device.decide()
        t2 = time.perf_counter()
        raw.append((t1 - t0) * 1e6)
        full.append((t2 - t1) * 1e6)
    f50, f99 = percentiles(full, 0.5, 0.99)
    r50, r99 = percentiles(raw, 0.5, 0.99)
    note = (
        f"{CANDIDATES} candidates: context, eligibility/cap/holdout masks, tensor, session.run, "
        "stable sort, diversity, reasons"
    )
    return [
        Record("decision_latency_p50_us", f50, "us", "raw session.run, same tensor", r50, note),
        Record("decision_latency_p99_us", f99, "us", "raw session.run, same tensor", r99, note),
    ]


class _CloudScoring:
    """A cloud-scoring service: the same ranking code behind `POST /score` on loopback."""

    def __init__(self, device: _Device) -> None:
        self._device = device
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="cloud-scoring", daemon=True)

    async def _score(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("surface") != SURFACE:
            raise web.HTTPBadRequest
        return web.json_response({"offers": self._device.decide()})

    async def _serve(self) -> None:
        app = web.Application()
        app.add_routes([web.post("/score", self._score)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server  # aiohttp has no public accessor for the bound port of port 0
        self.port = int(server.sockets[0].getsockname()[1])
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _main(self) -> None:
        asyncio.run(self._serve())

    def __enter__(self) -> _CloudScoring:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


async def _ask(port: int, rounds: int) -> tuple[list[float], list[str]]:
    url = f"http://127.0.0.1:{port}/score"
    times: list[float] = []
    last: list[str] = []
    async with aiohttp.ClientSession() as session:
        for i in range(rounds + 50):
            t0 = time.perf_counter()
            async with session.post(url, json={"device_id": DEVICE, "surface": SURFACE}) as resp:
                resp.raise_for_status()
                last = (await resp.json())["offers"]
            if i >= 50:  # warm-up excluded
                times.append((time.perf_counter() - t0) * 1e6)
    return times, last


def _local_vs_cloud(device: _Device) -> Record:
    local: list[float] = []
    expected = device.decide()
    for _ in range(HTTP_ROUNDS):
        t0 = time.perf_counter()
        device.decide()
        local.append((time.perf_counter() - t0) * 1e6)
    with _CloudScoring(device) as cloud:
        remote, answer = asyncio.run(_ask(cloud.port, HTTP_ROUNDS))
    if answer != expected:
        raise RuntimeError(f"cloud scoring answered {answer}, the device {expected}")
    (l50,) = percentiles(local, 0.5)
    (c50,) = percentiles(remote, 0.5)
    note = (
        "p50 of one decision on the device vs the same decision over keep-alive loopback HTTP "
        "(aiohttp server, same code, own thread); a real network adds its round trip on top"
    )
    return Record(
        "decision_local_vs_cloud", l50, "us", "same decision over loopback HTTP", c50, note
    )


def run() -> list[Record]:
    device = _Device()
    return [*_latency(device), _local_vs_cloud(device)]
