"""The measured lift of the agent's model ranking in a simulated fleet (issue 18): conversions
per 1,000 impressions and offers shown, the shipped model with `decisions.min_score` beside
popularity broadcast, same world, same seed, same sessions (`simulators.lift`)."""

from __future__ import annotations

import time

from bench.record import Record
from simulators.lift import run_lift
from simulators.options import LiftOptions

OPTIONS = LiftOptions(seed=7, households=300, days=7, min_score=0.3)
"""What `edgemart fleet lift` runs by default (docs/models.md)."""


def run() -> list[Record]:
    started = time.perf_counter()
    result = run_lift(OPTIONS)
    took = time.perf_counter() - started
    base, model = result.arm("broadcast"), result.arm("shipped")
    ranked, retrained = result.arm("ranked"), result.arm("retrained")
    settings = result.settings
    common = (
        f"seed {result.seed}, {settings['households']} households, {settings['devices']} devices,"
        f" {settings['days']} days, {settings['sessions_per_day']:g} sessions a device-day,"
        f" min_score {settings['min_score']:g}, holdout {settings['holdout']:g}; run {took:.0f} s"
    )

    def uplift(name: str) -> str:
        a = result.arm(name)
        return f"{a.uplift_per_1000:+.1f} ({a.uplift_low:+.1f} .. {a.uplift_high:+.1f})"

    return [
        Record(
            "fleet_conversions_per_1000_impressions",
            model.conversions_per_1000,
            "conversions / 1,000 impressions",
            "popularity broadcast (every eligible offer by priority), same fleet and seed",
            base.conversions_per_1000,
            f"{common}; shipped model + min_score; goal ratio >= 2.0; model without min_score"
            f" {ranked.conversions_per_1000:.1f}, retrained on the shipped arm's logs"
            f" {retrained.conversions_per_1000:.1f}; uplift vs holdout per 1,000 (95 % CI):"
            f" model {uplift('shipped')}, broadcast {uplift('broadcast')}",
        ),
        Record(
            "fleet_offers_shown",
            float(model.impressions),
            "offers shown",
            "popularity broadcast, same fleet and seed",
            float(base.impressions),
            f"{common}; goal ratio <= 0.5; model without min_score {ranked.impressions},"
            f" retrained {retrained.impressions}",
        ),
    ]
