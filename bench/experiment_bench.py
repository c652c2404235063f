"""`experiment_decision_hours`: simulated hours until a model experiment's sequential test
decides, at the synthetic fleet's traffic (issue 18 item 3).

The fleet is the seeded synthetic world (`simulators.world`, `BENCH_EXPERIMENT_HOUSEHOLDS`,
default 20,000 households): each device's usage signals per day (`daily_signal_rate`) are its
impression opportunities, spread over the day by the world's `hourly_load`; the control's
conversions per impression are the world's click rate under uniform exploration times the
household simulator's 30 % purchase after a click. The candidate converts
`BENCH_EXPERIMENT_LIFT` (default +20 %) better, on `share` 0.5 of the devices. Every 10
simulated minutes (the gateway looks every minute; verdicts move on this scale) the
gateway's own `experiment_stats.decide` looks at binomial draws of both arms, alpha 0.05,
minimum 1,000 impressions per arm; the figure is the median hours to a verdict over
`BENCH_EXPERIMENT_RUNS` (default 200) seeded runs. Baseline, side by side: the hours a
fixed-horizon test (alpha 0.05, power 0.8) for the same effect needs to reach its sample
size at the same traffic (`fixed_horizon_n`). The note adds how often the sequential test
picked the right arm, and the median hours for a candidate as much worse.
"""

from __future__ import annotations

import os
from statistics import median

import numpy as np

from bench.record import Record
from cloud_gateway.registry.experiment_stats import ArmCounts, Plan, decide, fixed_horizon_n
from protocol.vocabulary import PROFILES
from simulators.world import daily_signal_rate, hourly_load, logged_arrays, make_world

LOOK_MINUTES = 10
MAX_HOURS = 168.0
SHARE = 0.5
PURCHASE_AFTER_CLICK = 0.3
"""As `simulators.household.Household.browse`: a click becomes a purchase 30 % of the time."""


def fleet_traffic(households: int, seed: int) -> tuple[np.ndarray, float]:
    """(impressions per hour for 24 hours of the day, control conversions per impression)."""
    world = make_world(seed, households=households)
    per_day = sum(
        daily_signal_rate(persona, profile)
        for persona in (world.persona(i) for i in range(households))
        for profile in PROFILES
        if profile in persona.devices
    )
    rng = np.random.default_rng(seed)
    hourly = per_day / 24 * hourly_load(world, rng)
    sample = rng.choice(households, size=min(households, 2000), replace=False)
    logs = logged_arrays(world, sample, 20, seed)
    rate = float(logs.click.mean()) * PURCHASE_AFTER_CLICK
    return hourly, rate


def hours_to_verdict(
    hourly: np.ndarray, p0: float, p1: float, plan: Plan, rng: np.random.Generator
) -> tuple[float, str]:
    """Hours until `decide` gives a verdict (or MAX_HOURS), and which."""
    per_look = LOOK_MINUTES / 60
    n0 = n1 = x0 = x1 = 0
    looks = int(MAX_HOURS / per_look)
    for look in range(1, looks + 1):
        hour = look * per_look
        traffic = hourly[int((hour - per_look) % 24)] * per_look
        shown1 = int(rng.poisson(traffic * SHARE))
        shown0 = int(rng.poisson(traffic * (1 - SHARE)))
        n0, n1 = n0 + shown0, n1 + shown1
        x0 += int(rng.binomial(shown0, p0))
        x1 += int(rng.binomial(shown1, p1))
        verdict = decide(
            ArmCounts(1, impressions=n0, conversions=x0),
            ArmCounts(2, impressions=n1, conversions=x1),
            plan,
            hour,
        )
        if verdict.decision != "continue":
            return hour, verdict.decision
    return MAX_HOURS, "stop"


def fixed_hours(hourly: np.ndarray, n: int) -> float:
    """Hours until each arm (the smaller, at SHARE) has seen `n` impressions."""
    per_arm = hourly * min(SHARE, 1 - SHARE)
    seen, hour = 0.0, 0
    while seen < n:
        seen += float(per_arm[hour % 24])
        hour += 1
    return hour - (seen - n) / float(per_arm[(hour - 1) % 24])


def run() -> list[Record]:
    households = int(os.environ.get("BENCH_EXPERIMENT_HOUSEHOLDS", "20000"))
    runs = int(os.environ.get("BENCH_EXPERIMENT_RUNS", "200"))
    lift = float(os.environ.get("BENCH_EXPERIMENT_LIFT", "0.2"))
    hourly, p0 = fleet_traffic(households, 7)
    plan = Plan(alpha=0.05, min_impressions=1000, max_hours=MAX_HOURS, mde=lift)
    rng = np.random.default_rng(18)
    better = [hours_to_verdict(hourly, p0, p0 * (1 + lift), plan, rng) for _ in range(runs)]
    worse = [hours_to_verdict(hourly, p0, p0 * (1 - lift), plan, rng) for _ in range(runs)]
    sequential = median(h for h, _ in better)
    fixed = fixed_hours(hourly, fixed_horizon_n(p0, lift, alpha=0.05, power=0.8))
    right = sum(d == "promote" for _, d in better) + sum(d == "roll_back" for _, d in worse)
    note = (
        f"{households} households, {hourly.sum():,.0f} impressions/day, control "
        f"{p0:.3%} conversions/impression, candidate {lift:+.0%} on {SHARE:.0%} of devices; "
        f"median of {runs} runs looking every {LOOK_MINUTES} min (alpha 0.05, mSPRT); right "
        f"verdict in {right / (2 * runs):.1%} of runs; a candidate {lift:.0%} worse is rolled "
        f"back after {median(h for h, _ in worse):.2f} h (median). Baseline: fixed horizon "
        f"(power 0.8) reaching its {fixed_horizon_n(p0, lift):,} impressions per arm"
    )
    return [
        Record(
            "experiment_decision_hours",
            sequential,
            "h",
            "fixed-horizon test, same effect and traffic",
            fixed,
            note,
        )
    ]
