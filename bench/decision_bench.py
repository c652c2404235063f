"""On-device decision latency for 500 candidates vs raw `session.run` on the same tensor."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np

from agent.features import FeatureWindows
from agent.ranking import Consent, decide
from agent.scoring import build_matrix, load_default_model
from bench.record import Record, percentiles
from protocol.envelopes import Offer
from protocol.ids import utcnow
from simulators.world import make_world, usage_signals

CANDIDATES = 500
ROUNDS = 2000


def _offers(n: int) -> list[Offer]:
    world = make_world(5, households=2, offers=n)
    now = utcnow()
    return [
        Offer.model_validate(
            {
                **{k: v for k, v in r.items()},
                "campaign_id": f"c{i % 60}",
                "surfaces": ["tv_home_banner"],
                "starts_at": now - timedelta(hours=1),
                "expires_at": now + timedelta(days=1),
            }
        )
        for i, r in enumerate(world.catalog.records())
    ]


def run() -> list[Record]:
    model = load_default_model()
    offers = _offers(CANDIDATES)
    now = utcnow()
    windows = FeatureWindows()
    world = make_world(5, households=2)
    for s in usage_signals(world.persona(0), "tv", np.random.default_rng(1), 300):
        windows.observe(s["kind"], s["attrs"], now - timedelta(minutes=30))
    consent = Consent(analytics=True, personalization=True, marketing=True)
    ctx = windows.context(now, "tv", "Asia/Shanghai", True)
    matrix = build_matrix(model.spec, offers, ctx)
    feed = {model.spec.input_name: matrix}
    outputs = [model.spec.output_name]
    session = model.session
    full: list[float] = []
    raw: list[float] = []
    for _ in range(50):  # warm both paths
        session.run(outputs, feed)
        decide(model, offers, ctx, "tv_home_banner", 3, now, consent)
    for _ in range(ROUNDS):  # interleaved, so both see the same machine
        t0 = time.perf_counter()
        session.run(outputs, feed)
        t1 = time.perf_counter()
        c = windows.context(now, "tv", "Asia/Shanghai", True)
        decide(model, offers, c, "tv_home_banner", 3, now, consent)
        t2 = time.perf_counter()
        raw.append((t1 - t0) * 1e6)
        full.append((t2 - t1) * 1e6)
    f50, f99 = percentiles(full, 0.5, 0.99)
    r50, r99 = percentiles(raw, 0.5, 0.99)
    note = f"{CANDIDATES} candidates: context, features, tensor, session.run, policy, sort"
    return [
        Record("decision_latency_p50_us", f50, "us", "raw session.run, same tensor", r50, note),
        Record("decision_latency_p99_us", f99, "us", "raw session.run, same tensor", r99, note),
    ]
