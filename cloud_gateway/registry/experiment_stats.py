"""The statistics of a model experiment, pure: per-arm rates with 95 % intervals and the
sequential test that decides between the control and the candidate model.

The test is the mixture sequential probability ratio test (mSPRT) of Johari, Pekelis and
Walsh ("Always valid inference", 2017; what Optimizely's Stats Engine runs), on the
difference of the two arms' conversion rates (conversions per impression), normal
approximation with the pooled variance under "no difference". With the mixture N(0, tau^2)
over the difference, the likelihood ratio after any number of looks is

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * d^2 / (2 V (V + tau^2)))

(d the observed difference, V its variance). Rejecting "no difference" once Lambda >= 1/alpha
keeps the chance of a false verdict below alpha however often the gateway looks (1/Lambda is
an always-valid p-value). tau is `mde` times the pooled rate: the relative effect the
operator cares about sets the mixture's scale. Before `min_impressions` per arm no verdict is
given; past `max_hours` the experiment stops without one (the candidate is withdrawn: the
control is what was proven). The fixed-horizon sample size for the same effect is here too,
for the benchmark's side-by-side baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

Z95 = 1.959963984540054
"""The two-sided 95 % normal quantile."""

Decision = Literal["continue", "promote", "roll_back", "stop"]


@dataclass(frozen=True, slots=True)
class Interval:
    value: float
    low: float
    high: float

    def doc(self) -> dict[str, float]:
        return {
            "value": round(self.value, 6),
            "low": round(self.low, 6),
            "high": round(self.high, 6),
        }


def wilson(successes: int, trials: int, z: float = Z95) -> Interval:
    """The Wilson score interval of a proportion (0/0 is the empty interval at 0)."""
    if trials <= 0:
        return Interval(0.0, 0.0, 0.0)
    successes = min(max(successes, 0), trials)
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    # clamped: at p = 0 or 1 rounding could put the bound a hair inside the rate
    return Interval(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """What one arm (one model version) logged since the experiment started."""

    model_version: int
    devices: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0

    def doc(self) -> dict[str, Any]:
        """The arm as the API shows it (`GET /v1/models/{version}`'s `experiment.arms`)."""
        shown = self.impressions
        return {
            "model_version": self.model_version,
            "devices": self.devices,
            "impressions": shown,
            "clicks": self.clicks,
            "conversions": self.conversions,
            "revenue_per_1000": round(1000.0 * self.revenue / shown, 6) if shown else 0.0,
            "ctr": wilson(self.clicks, shown).doc(),
            "conversion": wilson(self.conversions, shown).doc(),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """What the operator stated up front."""

    alpha: float = 0.05
    min_impressions: int = 1000
    max_hours: float = 168.0
    mde: float = 0.2
    """The relative effect the mixture is scaled to (tau = mde x the pooled rate)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    reason: str
    lift: float
    """Candidate rate minus control rate, relative to the control's (0 when it has none)."""
    p_value: float
    """Always valid at this look: min(1, 1/Lambda)."""


def log_lambda(x0: int, n0: int, x1: int, n1: int, mde: float) -> float:
    """log of the mSPRT statistic for "arm 1's rate differs from arm 0's" (0: no evidence)."""
    if n0 <= 0 or n1 <= 0:
        return 0.0
    pooled = (x0 + x1) / (n0 + n1)
    variance = pooled * (1 - pooled) * (1 / n0 + 1 / n1)
    tau2 = (mde * pooled) ** 2
    if variance <= 0 or tau2 <= 0:
        return 0.0
    d = x1 / n1 - x0 / n0
    return 0.5 * math.log(variance / (variance + tau2)) + tau2 * d * d / (
        2 * variance * (variance + tau2)
    )


def decide(control: ArmCounts, candidate: ArmCounts, plan: Plan, hours: float) -> Verdict:
    """The decision at one look, `hours` after the start: promote the candidate, roll it back,
    stop without a verdict (past `max_hours`) or continue."""
    n0, n1 = control.impressions, candidate.impressions
    x0, x1 = control.conversions, candidate.conversions
    r0 = x0 / n0 if n0 else 0.0
    r1 = x1 / n1 if n1 else 0.0
    lift = (r1 - r0) / r0 if r0 > 0 else 0.0
    enough = min(n0, n1) >= plan.min_impressions
    stat = log_lambda(x0, n0, x1, n1, plan.mde) if enough else 0.0
    p_value = min(1.0, math.exp(-stat)) if stat > 0 else 1.0
    rates = (
        f"conversion per impression {r1:.4%} (v{candidate.model_version}, {n1} impressions) vs "
        f"{r0:.4%} (v{control.model_version}, {n0}); always-valid p = {p_value:.4g}"
    )
    if enough and stat >= math.log(1 / plan.alpha):
        if r1 > r0:
            return Verdict("promote", f"candidate wins: {rates}", lift, p_value)
        return Verdict("roll_back", f"candidate hurts conversion: {rates}", lift, p_value)
    if hours >= plan.max_hours:
        return Verdict(
            "stop",
            f"no verdict after {plan.max_hours:g} h at alpha {plan.alpha:g}: {rates}",
            lift,
            p_value,
        )
    return Verdict("continue", rates, lift, p_value)


def fixed_horizon_n(rate: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Impressions per arm a fixed-horizon two-sided test needs to detect `rate` x (1 + mde)
    against `rate` (normal approximation, unpooled)."""
    if not 0 < rate < 1 or mde <= 0 or not 0 < rate * (1 + mde) < 1:
        raise ValueError(f"rate {rate} and mde {mde}: both rates must lie in (0, 1)")
    normal = NormalDist()
    z = normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)
    other = rate * (1 + mde)
    spread = rate * (1 - rate) + other * (1 - other)
    return math.ceil(z * z * spread / (other - rate) ** 2)
