"""Live results, pure: per campaign and variant counts, rates with Wilson intervals, uplift.

Holdout devices are known without asking them: `protocol.assign.in_holdout` gives the same
answer at the gateway as on the device. Their impressions are counterfactual (logged, not
shown), so they are not counted as impressions; their conversions measure what happens
without the campaign, and uplift is the treated devices' conversion rate minus theirs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from pydantic import BaseModel, ConfigDict

from cloud_gateway.campaigns.explain import Explanations
from cloud_gateway.campaigns.model import Campaign, CampaignState
from protocol.assign import in_holdout

Z95 = 1.959963984540054


class Rate(BaseModel):
    """A proportion with its 95 % Wilson score interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    low: float
    high: float
    n: int


def wilson(successes: int, trials: int, z: float = Z95) -> Rate:
    """The Wilson score interval: sound for small counts and rates near 0 or 1."""
    if trials <= 0:
        return Rate(value=0.0, low=0.0, high=0.0, n=0)
    k = min(max(successes, 0), trials)
    p = k / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return Rate(
        value=round(p, 6),
        low=round(max(0.0, centre - half), 6),
        high=round(min(1.0, centre + half), 6),
        n=trials,
    )


class Uplift(BaseModel):
    """Conversion rate of treated devices minus that of holdout devices (per device)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    treated: Rate
    holdout: Rate
    absolute: float
    low: float
    high: float
    relative: float | None


def uplift(treated_conv: int, treated_n: int, held_conv: int, held_n: int) -> Uplift | None:
    """Difference of two proportions with Newcombe's hybrid Wilson interval (95 %)."""
    if treated_n <= 0 or held_n <= 0:
        return None
    t, h = wilson(treated_conv, treated_n), wilson(held_conv, held_n)
    diff = t.value - h.value
    low = diff - math.sqrt((t.value - t.low) ** 2 + (h.high - h.value) ** 2)
    high = diff + math.sqrt((t.high - t.value) ** 2 + (h.value - h.low) ** 2)
    return Uplift(
        treated=t,
        holdout=h,
        absolute=round(diff, 6),
        low=round(low, 6),
        high=round(high, 6),
        relative=round(diff / h.value, 6) if h.value > 0 else None,
    )


class VariantResults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str
    devices_pushed: int
    delivered: int
    """Devices known to hold it: a receipt for its bundle, or an outcome reported for it."""
    impressions: int
    clicks: int
    dismisses: int
    conversions: int
    claims_granted: int
    claims_refused: int
    ctr: Rate
    conversion_rate: Rate
    """Conversions per impression."""


class CampaignResults(BaseModel):
    """`GET /v1/campaigns/{id}/stats`: what a campaign reached and earned, live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign_id: str
    name: str
    state: CampaignState
    push: str
    """`cohort` (retained catalogs) or `device` (one bundle per selected device)."""
    pushed: int
    """Offers pushed: in cohort catalogs, or in device bundles."""
    publishes: int
    devices_pushed: int
    delivered: int
    holdout_share: float
    holdout_devices: int
    impressions: int
    counterfactual_impressions: int
    clicks: int
    dismisses: int
    conversions: int
    claims_granted: int
    claims_refused: int
    stock: dict[str, dict[str, int]]
    ctr: Rate
    conversion_rate: Rate
    uplift: Uplift | None
    variants: list[VariantResults]
    explanations: Explanations | None = None
    """Why devices were or were not shown the campaign (issue 18, `campaigns/explain.py`)."""
    idle_reason: str | None = None
    """Why a live campaign has delivered nothing yet (`campaigns.reach.idle_reason`); None
    once something was delivered, or when it is not live."""


def campaign_results(campaign: Campaign, rows: dict[str, Any]) -> CampaignResults:
    """Fold the raw rows of `campaign_store.campaign_rows` into results."""
    cid, share = campaign.id, campaign.holdout
    held: dict[str, bool] = {}

    def is_held(device_id: str) -> bool:
        if device_id not in held:
            held[device_id] = in_holdout(device_id, cid, share)
        return held[device_id]

    kinds = ("impression", "click", "dismiss", "conversion")
    per_variant: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(kinds, 0))
    counterfactual = 0
    devices_seen: dict[str, set[str]] = defaultdict(set)
    exposed: dict[bool, set[str]] = {True: set(), False: set()}
    converted: dict[bool, set[str]] = {True: set(), False: set()}
    for device_id, raw_variant, kind, n in rows["outcomes"]:
        variant = raw_variant or "a"
        devices_seen[variant].add(device_id)
        h = is_held(device_id)
        if kind == "impression":
            exposed[h].add(device_id)
            if h:
                counterfactual += n
                continue
        if kind == "conversion":
            converted[h].add(device_id)
        if kind in kinds:
            per_variant[variant][kind] += n
    pushed_devices: dict[str, set[str]] = defaultdict(set)
    receipted: dict[str, set[str]] = defaultdict(set)
    device_offers = 0
    for device_id, variant, _holdout, offers, has_receipt in rows["device_pushes"]:
        v = variant or "a"
        pushed_devices[v].add(device_id)
        device_offers += offers
        if has_receipt:
            receipted[v].add(device_id)
    variant_of = {o.id: o.variant for o in campaign.offers}
    claims: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for offer_id, granted, n in rows["claims"]:
        claims[variant_of.get(offer_id, "a")][0 if granted else 1] += n
    names = sorted(set(campaign.weights) | set(per_variant) | set(pushed_devices) | set(claims))
    variants = []
    for v in names:
        c = per_variant[v]
        delivered = receipted[v] | devices_seen[v]
        variants.append(
            VariantResults(
                variant=v,
                devices_pushed=len(pushed_devices[v]),
                delivered=len(delivered),
                impressions=c["impression"],
                clicks=c["click"],
                dismisses=c["dismiss"],
                conversions=c["conversion"],
                claims_granted=claims[v][0],
                claims_refused=claims[v][1],
                ctr=wilson(c["click"], c["impression"]),
                conversion_rate=wilson(c["conversion"], c["impression"]),
            )
        )
    total = {k: sum(per_variant[v][k] for v in per_variant) for k in kinds}
    all_pushed = set().union(*pushed_devices.values()) if pushed_devices else set()
    all_delivered = set().union(*receipted.values(), *devices_seen.values())
    treated_exposed = exposed[False] | converted[False]
    held_exposed = exposed[True] | converted[True]
    return CampaignResults(
        campaign_id=cid,
        name=campaign.name,
        state=campaign.state,
        push="device" if campaign.per_device else "cohort",
        pushed=device_offers + rows["cohort_offers"],
        publishes=len(rows["device_pushes"]) + rows["cohort_publishes"],
        devices_pushed=len(all_pushed),
        delivered=len(all_delivered),
        holdout_share=share,
        holdout_devices=sum(1 for d in all_pushed | all_delivered if is_held(d)),
        impressions=total["impression"],
        counterfactual_impressions=counterfactual,
        clicks=total["click"],
        dismisses=total["dismiss"],
        conversions=total["conversion"],
        claims_granted=sum(g for g, _ in claims.values()),
        claims_refused=sum(r for _, r in claims.values()),
        stock={oid: {"initial": initial, "left": left} for oid, initial, left in rows["stock"]},
        ctr=wilson(total["click"], total["impression"]),
        conversion_rate=wilson(total["conversion"], total["impression"]),
        uplift=uplift(
            len(converted[False]), len(treated_exposed), len(converted[True]), len(held_exposed)
        )
        if share > 0
        else None,
        variants=variants,
    )
