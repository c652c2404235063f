"""The campaign a fleet run launches, and how long it takes to reach the devices: from the
operator's launch call to the moment each device has verified the offers (its
`offers_verified` counter, watched by the worker hosting it)."""

from __future__ import annotations

import time
import tomllib
from typing import Any

from firmware_profiles import profile_path
from simulators.demo import Operator, sample_campaigns
from simulators.world import make_world

PROFILES = ("hub", "tv", "phone")


def surfaces() -> list[str]:
    found: set[str] = set()
    for name in PROFILES:
        with profile_path(name).open("rb") as handle:
            found.update(tomllib.load(handle)["surfaces"])
    return sorted(found)


async def launch(operator: Operator, seed: int) -> float:
    """One sample campaign for every device created and launched; the wall-clock time
    (`time.time()`, shared by the machine's processes) of the launch call."""
    campaign = sample_campaigns(make_world(seed, households=8), surfaces())[0]
    created = await operator.call("POST", "/v1/campaigns", campaign)
    launched = time.time()
    await operator.call("POST", f"/v1/campaigns/{created['id']}/launch")
    return launched


def latency(launched: float | None, offer_at: dict[str, float]) -> dict[str, Any]:
    """The report's launch-to-device figures over the devices that got the offers."""
    if launched is None:
        return {"offers_delivered_devices": 0}
    ms = sorted(max(0.0, (at - launched) * 1000) for at in offer_at.values())

    def pct(p: float) -> float | None:
        if not ms:
            return None
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 1)

    return {
        "offers_delivered_devices": len(ms),
        "launch_to_device_p50_ms": pct(50),
        "launch_to_device_p99_ms": pct(99),
        "launch_to_device_max_ms": round(ms[-1], 1) if ms else None,
    }
