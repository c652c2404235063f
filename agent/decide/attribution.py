"""Attribution of conversions: to the newest click of the same campaign within the click window,
else to its newest impression within the impression window; otherwise not the campaign's.

Exposures (impressions and clicks, real or counterfactual) are kept in SQLite with the score,
model version, variant and features they were shown with, so an attributed conversion carries
the same: a trainer and the gateway see which decision led to it, and a holdout device's
conversion after a counterfactual impression is marked counterfactual (that is the uplift
baseline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.config import PolicySettings
from agent.store.core import Store

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Exposure:
    """The impression or click a conversion is attributed to."""

    outcome_id: str
    kind: str
    offer_id: str
    variant: str
    at: float
    score: float | None
    model_version: int | None
    features: tuple[float, ...] | None
    counterfactual: bool

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Exposure:
        features = row.get("features")
        return cls(
            outcome_id=str(row["outcome_id"]),
            kind=str(row["kind"]),
            offer_id=str(row["offer_id"]),
            variant=str(row["variant"]),
            at=float(row["at"]),
            score=None if row.get("score") is None else float(row["score"]),
            model_version=None if row.get("model_version") is None else int(row["model_version"]),
            features=tuple(json.loads(features)) if features else None,
            counterfactual=bool(row.get("counterfactual")),
        )


def windows(policy: PolicySettings) -> list[tuple[str, float]]:
    """`(exposure kind, window in seconds)` to try, in order: clicks first, then impressions."""
    out = [("click", policy.attribution_click_days * DAY_S)]
    if policy.attribution_impression_days > 0:
        out.append(("impression", policy.attribution_impression_days * DAY_S))
    return out


def longest_window_s(policy: PolicySettings) -> float:
    return max(seconds for _, seconds in windows(policy))


async def attribute(
    store: Store, policy: PolicySettings, campaign_id: str, now: float
) -> Exposure | None:
    """The exposure a conversion of `campaign_id` at `now` is attributed to, if any."""
    for kind, seconds in windows(policy):
        row = await store.call(store.decisions.latest_exposure, campaign_id, kind, now - seconds)
        if row is not None:
            return Exposure.from_row(row)
    return None


def explain_miss(policy: PolicySettings, campaign_id: str) -> str:
    """Why a conversion was not attributed, in words."""
    text = f"no click of campaign {campaign_id!r} in the last {policy.attribution_click_days:g} d"
    if policy.attribution_impression_days > 0:
        text += f" and no impression in the last {policy.attribution_impression_days:g} d"
    return text
