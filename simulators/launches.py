"""Campaigns a fleet run launches at the scenario's times, over the gateway's HTTP API as an
operator would, and what followed: how long each device took to hold the new offers
(launch → offer, ms) and how long its first decision with them took (decision, ms).

The devices are watched through probes the runner gives (`OffersProbe`, `Decide`), so the
same plan serves agents in the fleet's process or in their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from simulators.demo import Operator, sample_campaigns
from simulators.timeline import GatewayEndpoint
from simulators.world import World

log = logging.getLogger(__name__)

OffersProbe = Callable[[], Awaitable[dict[str, int]]]
"""Offers each device holds now, by device id."""
Decide = Callable[[str], Awaitable[float]]
"""One ranking decision on a device; its latency in ms."""
WATCH_S = 60.0
"""How long a launch is followed; devices without the offers then are counted pending."""
POLL_S = 0.05
POLL_S_PER_DEVICE = 5e-5
"""Large fleets are polled less often, so that the watch costs little of the run's CPU."""
MAX_SAMPLES = 20_000
"""Latencies kept per kind (a fleet of 5,000 launching 4 times: all of them)."""


class GatewayDown(Exception):
    """The gateway did not answer within the watch."""


class Launches:
    def __init__(
        self,
        plan: Sequence[tuple[float, int]],
        world: World,
        surfaces: list[str],
        *,
        gateway: GatewayEndpoint,
        offers: OffersProbe,
        decide: Decide | None = None,
        watch_s: float = WATCH_S,
    ) -> None:
        self.plan = sorted(plan)
        self._catalog = sample_campaigns(world, surfaces)
        self._gateway, self._offers, self._decide = gateway, offers, decide
        self._watch_s = watch_s
        self._next = 0
        self.events: list[dict[str, Any]] = []
        self.launch_to_offer_ms: list[float] = []
        self.decision_ms: list[float] = []
        self.pending = 0

    async def run(self, started: float) -> None:
        """Launch each campaign at its time (seconds after `started`) and follow it."""
        watches: list[asyncio.Task[None]] = []
        async with aiohttp.ClientSession() as http:
            for at_s, count in self.plan:
                await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
                await self._launch(http, count, started, watches)
            await asyncio.gather(*watches)

    async def _call(self, http: aiohttp.ClientSession, path: str, body: object = None) -> Any:
        """POST as an operator would, again while the gateway is down or restarting (a new
        gateway may listen on another port); `GatewayDown` when it stays down."""
        deadline = time.monotonic() + self._watch_s
        while True:
            endpoint = self._gateway()
            if endpoint is not None:
                try:
                    return await Operator(http, *endpoint).call("POST", path, body)
                except (aiohttp.ClientError, OSError) as exc:
                    if time.monotonic() > deadline:
                        raise GatewayDown(f"POST {path}: {exc}") from exc
            elif time.monotonic() > deadline:
                raise GatewayDown(f"POST {path}: the gateway stayed down")
            await asyncio.sleep(0.5)

    async def _launch(
        self,
        http: aiohttp.ClientSession,
        count: int,
        started: float,
        watches: list[asyncio.Task[None]],
    ) -> None:
        """Create `count` campaigns, then launch them while a watch follows the devices.
        A campaign created twice (its answer lost in a gateway restart) is launched once."""
        names, ids = [], []
        try:
            for _ in range(count):
                campaign = self._catalog[self._next % len(self._catalog)]
                self._next += 1
                created = await self._call(http, "/v1/campaigns", campaign)
                ids.append(created["id"])
                names.append(campaign["name"])
            before = await self._offers()
            at = time.monotonic()  # launch -> offer counts from the first launch request
            watches.append(asyncio.create_task(self._follow(before, at)))
            for campaign_id in ids:
                await self._call(http, f"/v1/campaigns/{campaign_id}/launch")
        except (GatewayDown, RuntimeError) as exc:  # RuntimeError: the gateway said no
            self.events.append({"event": f"launch failed: {exc}", "names": names})
            log.warning("fleet: launch of %s failed: %s", names, exc)
            return
        self.events.append({"at_s": round(at - started, 2), "event": "launched", "names": names})
        log.info("fleet: launched %s at %.1fs", names, at - started)

    async def _follow(self, before: dict[str, int], launched: float) -> None:
        waiting = dict(before)
        deadline = launched + self._watch_s
        arrived: list[str] = []
        poll_s = max(POLL_S, len(before) * POLL_S_PER_DEVICE)  # a 5,000-device poll: 0.25 s
        while waiting and time.monotonic() < deadline:
            now = await self._offers()
            got = [d for d, n in waiting.items() if now.get(d, 0) > n]
            at = time.monotonic()
            for device in got:
                del waiting[device]
                arrived.append(device)
                if len(self.launch_to_offer_ms) < MAX_SAMPLES:
                    self.launch_to_offer_ms.append(round((at - launched) * 1000, 1))
            await asyncio.sleep(poll_s)
        self.pending += len(waiting)
        for device in arrived:  # after the watch, so that deciding does not slow the polls
            if self._decide is not None and len(self.decision_ms) < MAX_SAMPLES:
                self.decision_ms.append(round(await self._decide(device), 2))

    def report(self) -> dict[str, Any]:
        return {
            "campaigns": self.events,
            "launch_to_offer_ms": summary(self.launch_to_offer_ms),
            "launch_to_offer_pending": self.pending,
            "decision_ms": summary(self.decision_ms),
        }


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Count, p50, p90, p99, max, and the values themselves (bounded by their producer)."""
    if not values:
        return {"n": 0, "values": []}
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "n": len(ordered),
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "max": ordered[-1],
        "values": list(values),
    }
