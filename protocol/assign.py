"""Stable assignment by hash: holdout groups, campaign variants and model rollout cohorts.

Device and cloud compute the same answer from the same ids, with no coordination: a device
knows whether it is in a campaign's holdout, the gateway knows who was held out when it
computes uplift, and a rollout at 10 % reaches the same 10 % of devices every time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def bucket(device_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by `device_id` and `salt` (first 8 bytes of sha256)."""
    digest = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(device_id: str, campaign_id: str, share: float) -> bool:
    """True when the device belongs to the campaign's holdout (`share` of all devices)."""
    return share > 0 and bucket(device_id, f"holdout:{campaign_id}") < share


def pick_variant(device_id: str, campaign_id: str, weights: Mapping[str, float]) -> str:
    """The campaign variant this device sees, by weight; stable across relaunches."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        raise ValueError("variant weights must include a positive weight")
    point = bucket(device_id, f"variant:{campaign_id}") * total
    for name in sorted(weights):
        weight = weights[name]
        if weight <= 0:
            continue
        if point < weight:
            return name
        point -= weight
    return max(sorted(weights), key=lambda n: weights[n])  # float rounding at the very top


def in_rollout(device_id: str, rollout_key: str, percent: float) -> bool:
    """True when the device is inside a staged rollout of `percent` (0..100)."""
    return bucket(device_id, f"rollout:{rollout_key}") * 100 < percent
