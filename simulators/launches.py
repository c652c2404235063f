"""Campaigns a fleet run launches, over the gateway's HTTP API as an operator would, and what
followed: how long each device took to hold the new offers (launch → offer, ms) and how long
its first decision with them took (decision, ms).

The scenario's `campaigns` give the launches ((at s, how many)); a run without them launches
one sample campaign as the rounds begin. The devices are watched where they run: each agent
worker notes its devices' offers before the launch and when each holds more
(`simulators.fleet_worker`, `watch`), then times one decision on each; the fleet process only
asks whether the watch is done (`LaunchWatch`) and reads what the workers saw at the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp

from firmware_profiles import profile_path
from simulators.demo import Operator, sample_campaigns
from simulators.timeline import GatewayEndpoint
from simulators.world import World

log = logging.getLogger(__name__)

DEFAULT_PLAN = ((0.0, 1),)
"""Without a scenario's campaigns: one launched as the rounds begin."""
RETRY_S = 60.0
"""How long a launch request is tried again while the gateway is down or restarting."""
FOLLOW_POLL_S = 0.5
MAX_SAMPLES = 20_000
"""Latencies kept in the report per kind (the percentiles are over all of them)."""


class LaunchWatch(Protocol):
    """The devices watched for launch `launch` (see the module)."""

    async def begin(self, launch: int) -> None: ...

    async def followed(self, launch: int) -> bool: ...


class GatewayDown(Exception):
    """The gateway did not answer within `RETRY_S`."""


def surfaces(profiles: Iterable[str]) -> list[str]:
    """The surfaces of the run's device profiles (the shipped profile files)."""
    found: set[str] = set()
    for name in set(profiles):
        with profile_path(name).open("rb") as handle:
            found.update(tomllib.load(handle)["surfaces"])
    return sorted(found)


class Launches:
    def __init__(
        self,
        plan: Sequence[tuple[float, int]],
        world: World,
        surfaces: list[str],
        *,
        gateway: GatewayEndpoint,
        watch: LaunchWatch,
        retry_s: float = RETRY_S,
    ) -> None:
        self.plan = sorted(plan)
        self._catalog = sample_campaigns(world, surfaces)
        self._gateway, self._watch = gateway, watch
        self._retry_s = retry_s
        self._next = 0
        self.events: list[dict[str, Any]] = []
        self.launched: dict[int, float] = {}
        """Launch -> when (`time.time()`) its first launch request was sent."""

    async def run(self, began: float, clock: float) -> None:
        """Launch each campaign at its time (seconds after `began`, the first usage round)
        and follow it until the workers' watches are done; the events are dated on the
        run's clock (seconds after `clock`, as the faults and the timeline are)."""
        follows: list[asyncio.Task[None]] = []
        async with aiohttp.ClientSession() as http:
            for k, (at_s, count) in enumerate(self.plan):
                await asyncio.sleep(max(0.0, began + at_s - time.monotonic()))
                await self._launch(http, k, count, clock, follows)
            await asyncio.gather(*follows)

    async def _call(self, http: aiohttp.ClientSession, path: str, body: object = None) -> Any:
        """POST as an operator would, again while the gateway is down or restarting;
        `GatewayDown` when it stays down."""
        deadline = time.monotonic() + self._retry_s
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
        k: int,
        count: int,
        started: float,
        follows: list[asyncio.Task[None]],
    ) -> None:
        """Create `count` campaigns, then launch them while the workers watch the devices.
        A campaign created twice (its answer lost in a gateway restart) is launched once."""
        names, ids = [], []
        try:
            for _ in range(count):
                campaign = self._catalog[self._next % len(self._catalog)]
                self._next += 1
                created = await self._call(http, "/v1/campaigns", campaign)
                ids.append(created["id"])
                names.append(campaign["name"])
            await self._watch.begin(k)
            at = time.monotonic()  # launch -> offer counts from the first launch request
            self.launched[k] = time.time()
            follows.append(asyncio.create_task(self._follow(k)))
            for campaign_id in ids:
                await self._call(http, f"/v1/campaigns/{campaign_id}/launch")
        except (GatewayDown, RuntimeError) as exc:  # RuntimeError: the gateway said no
            self.events.append({"event": f"launch failed: {exc}", "names": names})
            log.warning("fleet: launch of %s failed: %s", names, exc)
            return
        self.events.append({"at_s": round(at - started, 2), "event": "launched", "names": names})
        log.info("fleet: launched %s at %.1fs", names, at - started)

    async def _follow(self, k: int) -> None:
        """Until every worker's watch of launch `k` is done (all devices have the offers,
        or `fleet_worker.WATCH_S` passed, and the decisions are timed): polled, as the
        watches run in other processes."""
        while not await self._watch.followed(k):  # noqa: ASYNC110 - a remote state
            await asyncio.sleep(FOLLOW_POLL_S)

    def report(self, watched: Mapping[int, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
        """From what each worker's watch saw of each launch (`offer_at`: device -> time,
        `pending`, `decision_ms`): the latencies over all launches, and the launch-to-device
        figures of the bench (`fleet_launch_to_device_p99_ms`) from the same data."""
        offer_ms: list[float] = []
        decision_ms: list[float] = []
        reached: set[str] = set()
        pending = 0
        for k, at in self.launched.items():
            for seen in watched.get(k, ()):
                for device, when in seen["offer_at"].items():
                    offer_ms.append(round(max(0.0, (float(when) - at) * 1000), 1))
                    reached.add(device)
                pending += int(seen["pending"])
                decision_ms.extend(seen["decision_ms"])
        offers = summary(offer_ms)
        return {
            "campaigns": self.events,
            "launch_to_offer_ms": offers,
            "launch_to_offer_pending": pending,
            "decision_ms": summary(decision_ms),
            "offers_delivered_devices": len(reached),
            "launch_to_device_p50_ms": offers.get("p50"),
            "launch_to_device_p99_ms": offers.get("p99"),
            "launch_to_device_max_ms": offers.get("max"),
        }


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Count, p50, p90, p99, max (over all), and at most `MAX_SAMPLES` of the values."""
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
        "values": list(values[:MAX_SAMPLES]),
    }
