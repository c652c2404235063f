"""The lift run's figures: outcomes drawn from the world's truth, per-arm rates, uplift, table.

Pure numpy over what `simulators.lift` recorded. An impression's uniforms are a hash of
(seed, household, device, session, offer, draw): the same impression in two arms, or a shown
offer and the same offer held out, meet the same luck (common random numbers), and a seed
always gives the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from simulators.world import World

Z95 = 1.959963984540054
GOAL_RATE_RATIO = 2.0
GOAL_SHOWN_RATIO = 0.5
_LABELS = {
    "broadcast": "(a) popularity broadcast: every eligible offer, by priority",
    "ranked": "(b0) shipped default model, no min_score",
    "shipped": "(b) shipped default model, min_score",
    "retrained": "(c) retrained on (b)'s logs, min_score",
}
U64 = npt.NDArray[np.uint64]


@dataclass(slots=True)
class ArmTally:
    """Impressions (or held-out ones) of one arm, as aligned lists."""

    household: list[int] = field(default_factory=list)
    device: list[int] = field(default_factory=list)
    session: list[int] = field(default_factory=list)
    offer: list[int] = field(default_factory=list)
    hour: list[float] = field(default_factory=list)
    profile: list[int] = field(default_factory=list)

    def add(self, key: tuple[int, int, int], offer: int, hour: float, profile: int) -> None:
        self.household.append(key[0])
        self.device.append(key[1])
        self.session.append(key[2])
        self.offer.append(offer)
        self.hour.append(hour)
        self.profile.append(profile)

    def __len__(self) -> int:
        return len(self.offer)


def _mix(x: U64) -> U64:
    """splitmix64's finaliser, vectorised."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniforms(seed: int, tally: ArmTally, draw: int) -> npt.NDArray[np.float64]:
    """One uniform in [0, 1) per impression, a function of the seed, its key and `draw`."""
    h = _mix(np.full(len(tally), seed & 0xFFFFFFFF, dtype=np.uint64) + np.uint64(draw))
    for column in (tally.household, tally.device, tally.session, tally.offer):
        with np.errstate(over="ignore"):
            h = _mix(h ^ np.asarray(column, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return np.asarray((h >> np.uint64(11)).astype(np.float64) / float(1 << 53))


def outcomes(
    world: World, tally: ArmTally, seed: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(clicked, converted when shown, converted when held out) per impression of `tally`."""
    if not len(tally):
        empty = np.zeros(0, dtype=bool)
        return empty, empty, empty
    click_p, buy_p, organic_p = world.outcome_probabilities(
        np.asarray(tally.household, dtype=np.int64),
        np.asarray(tally.offer, dtype=np.int64),
        np.asarray(tally.hour, dtype=np.float64),
        np.asarray(tally.profile, dtype=np.int64),
    )
    clicked = uniforms(seed, tally, 1) < click_p
    organic = uniforms(seed, tally, 3) < organic_p
    converted = (clicked & (uniforms(seed, tally, 2) < buy_p)) | organic
    return clicked, converted, organic


@dataclass(frozen=True, slots=True)
class ArmResult:
    name: str
    label: str
    decisions: int
    impressions: int
    clicks: int
    conversions: int
    conversions_per_1000: float
    ctr: float
    offers_per_device_day: float
    held_out: int
    held_conversions: int
    held_per_1000: float
    uplift_per_1000: float
    """Conversions per 1,000 impressions shown minus per 1,000 held out (nan: none held)."""
    uplift_low: float
    uplift_high: float

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class LiftReport:
    seed: int
    settings: Mapping[str, Any]
    arms: tuple[ArmResult, ...]

    def arm(self, name: str) -> ArmResult:
        return next(a for a in self.arms if a.name == name)

    def ratios(self, name: str) -> tuple[float, float]:
        """(conversions per 1,000 impressions, offers shown) of arm `name` over broadcast's."""
        base, arm = self.arm("broadcast"), self.arm(name)
        rate = _ratio(arm.conversions_per_1000, base.conversions_per_1000)
        return rate, _ratio(arm.impressions, base.impressions)

    def best(self) -> str:
        """The model arm with the most conversions per 1,000 impressions."""
        return max(("shipped", "retrained"), key=lambda n: self.arm(n).conversions_per_1000)

    def goal_met(self) -> bool:
        rate, shown = self.ratios(self.best())
        return rate >= GOAL_RATE_RATIO and shown <= GOAL_SHOWN_RATIO

    def to_json(self) -> dict[str, Any]:
        best = self.best()
        rate, shown = self.ratios(best)
        return {
            "seed": self.seed,
            "settings": dict(self.settings),
            "arms": [a.to_json() for a in self.arms],
            "best": best,
            "rate_ratio": rate,
            "shown_ratio": shown,
            "goal_met": self.goal_met(),
        }

    def markdown(self) -> str:
        """The result table (docs/models.md)."""
        lines = [
            "| arm | offers shown | per device-day | conversions / 1,000 impressions | vs (a)"
            " | shown vs (a) | CTR | uplift vs holdout / 1,000 (95 % CI) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for a in self.arms:
            rate, shown = self.ratios(a.name)
            uplift = (
                "n/a (none held out)"
                if math.isnan(a.uplift_per_1000)
                else f"{a.uplift_per_1000:+.1f} ({a.uplift_low:+.1f} .. {a.uplift_high:+.1f});"
                f" {a.held_out:,} held out"
            )
            lines.append(
                f"| {a.label} | {a.impressions:,} | {a.offers_per_device_day:.2f}"
                f" | {a.conversions_per_1000:.1f} ({a.conversions:,}) | {rate:.2f}x"
                f" | {shown:.2f} | {a.ctr:.2%} | {uplift} |"
            )
        return "\n".join(lines) + "\n"


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _per_1000(hits: int, n: int) -> float:
    return 1000.0 * hits / n if n else math.nan


def _arm(
    world: World, name: str, recorded: tuple[ArmTally, ArmTally, int], seed: int, device_days: int
) -> ArmResult:
    shown, held, decisions = recorded
    clicked, converted, _ = outcomes(world, shown, seed)
    _, _, held_converted = outcomes(world, held, seed)
    n, m = len(shown), len(held)
    conv, held_conv = int(converted.sum()), int(held_converted.sum())
    uplift = low = high = math.nan
    if n and m:
        p, q = conv / n, held_conv / m
        se = math.sqrt(p * (1 - p) / n + q * (1 - q) / m)
        uplift = 1000.0 * (p - q)
        low, high = uplift - 1000.0 * Z95 * se, uplift + 1000.0 * Z95 * se
    return ArmResult(
        name=name,
        label=_LABELS.get(name, name),
        decisions=decisions,
        impressions=n,
        clicks=int(clicked.sum()),
        conversions=conv,
        conversions_per_1000=_per_1000(conv, n),
        ctr=int(clicked.sum()) / n if n else math.nan,
        offers_per_device_day=n / device_days if device_days else math.nan,
        held_out=m,
        held_conversions=held_conv,
        held_per_1000=_per_1000(held_conv, m),
        uplift_per_1000=uplift,
        uplift_low=low,
        uplift_high=high,
    )


def report(
    world: World,
    recorded: Mapping[str, tuple[ArmTally, ArmTally, int]],
    *,
    seed: int,
    device_days: int,
    settings: Mapping[str, Any],
) -> LiftReport:
    """Each arm's outcomes drawn and summed, in the order of `recorded`."""
    arms = tuple(_arm(world, name, rec, seed, device_days) for name, rec in recorded.items())
    return LiftReport(seed, settings, arms)
