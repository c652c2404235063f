"""What a fleet run adds around its usage rounds, kept apart from the runner
(`simulators.fleet`, which calls it through a few hooks): the pace, the timed faults and
campaigns of a scenario, the timeline sampler and the cost meter, and what they add to the
report.

The probes into the devices read in-process agents (`in_process_probes`); a runner with
agents in other processes gives its own probes with the same shapes
(`simulators.timeline.DeviceProbe`, `simulators.launches.OffersProbe`, `Decide`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from simulators.cost import CostMeter, process_cpu_s
from simulators.household import Household
from simulators.launches import Decide, Launches, OffersProbe, summary
from simulators.options import FleetOptions
from simulators.pace import Pace, personas
from simulators.timeline import DeviceProbe, GatewayEndpoint, Sampler
from simulators.world import World

Action = Callable[[], Awaitable[None]]


async def at_times(started: float, actions: Sequence[tuple[float, Action]]) -> None:
    """Run each action at its time (seconds after `started`), in time order."""
    for at_s, action in sorted(actions, key=lambda a: a[0]):
        await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
        await action()


def in_process_probes(households: Sequence[Household]) -> tuple[DeviceProbe, OffersProbe, Decide]:
    runs = {run.spec.device_id: run for hh in households for run in hh.runs}

    async def devices() -> dict[str, int]:
        up = accepted = resent = connects = offers = 0
        for run in runs.values():
            agent = run.agent
            up += agent.parts.link.connected.is_set()
            accepted += len(run.accepted)
            counters = agent.parts.metrics.counters
            resent += counters.get("batches_resent", 0)
            connects += counters.get("link_connects", 0)
            offers += len(agent.offers)
        return {
            "devices_up": up,
            "signals_accepted": accepted,
            "batches_resent": resent,
            "reconnects": max(0, connects - len(runs)),
            "offers_held": offers,
        }

    async def offers() -> dict[str, int]:
        return {device: len(run.agent.offers) for device, run in runs.items()}

    async def decide(device: str) -> float:
        agent = runs[device].agent
        began = time.perf_counter()
        await agent.rank(surface=agent.settings.profile.surfaces[0], limit=3)
        return (time.perf_counter() - began) * 1000

    return devices, offers, decide


class Observation:
    """`async with Observation(...).running(...)`: sampling and the scenario's timed events
    from the first usage round until the devices drained."""

    def __init__(self, options: FleetOptions, world: World) -> None:
        self.options = options
        self.world = world
        self.pace = Pace(options, world)
        self.sampler: Sampler | None = None
        self.launches: Launches | None = None
        self.cost: CostMeter | None = None
        self._started = time.monotonic()
        self._rounds_began = self._started
        self._tasks: list[asyncio.Task[None]] = []

    def counts(self, round_: int, household: Household) -> dict[str, int]:
        """Signals each of `household`'s devices sends in `round_`."""
        personas = {r.spec.device_id: (household.persona, r.spec.profile) for r in household.runs}
        return self.pace.counts(round_, personas)

    def crash_count(self, round_: int) -> int:
        """Signals each process TV (`agent-kill`) sends in `round_`: at the world pace, a TV
        of the world's next household after the fleet's."""
        persona = self.world.persona(personas(self.options)[-1])
        return self.pace.counts(round_, {"crash-tv": (persona, "tv")})["crash-tv"]

    @contextlib.asynccontextmanager
    async def running(
        self,
        *,
        started: float,
        households: Sequence[Household],
        gateway: GatewayEndpoint,
        gateway_pid: int,
        gateway_db: Path | None,
        faults: Callable[[], list[dict[str, Any]]],
        fault_actions: Sequence[tuple[float, Action]] = (),
        broker: str | None = None,
        probes: tuple[DeviceProbe, OffersProbe, Decide] | None = None,
    ) -> Any:
        devices, offers, decide = probes or in_process_probes(households)
        self._started, self._rounds_began = started, time.monotonic()
        self.cost = CostMeter(gateway_pid, gateway_db)
        await self.cost.start()
        self.sampler = Sampler(
            started=started,
            gateway=gateway,
            devices=devices,
            faults=faults,
            broker=broker,
            cpu=lambda: _safe_cpu(gateway_pid),
            progress=self.options.progress,
        )
        if self.options.campaigns:
            surfaces = sorted(
                {s for hh in households for r in hh.runs for s in r.agent.settings.profile.surfaces}
            )
            self.launches = Launches(
                self.options.campaigns,
                self.world,
                surfaces,
                gateway=gateway,
                offers=offers,
                decide=decide,
            )
            self._tasks.append(asyncio.create_task(self.launches.run(self._rounds_began)))
        if fault_actions:
            self._tasks.append(asyncio.create_task(at_times(self._rounds_began, fault_actions)))
        async with self.sampler:
            try:
                yield self
                await self.cost.finish()
            finally:
                for task in self._tasks:
                    if not task.done():
                        task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def settle(self) -> None:
        """Wait for the timed faults to end and the launches to be followed (before the drain
        is judged): a task that failed raises here."""
        for task in self._tasks:
            await task

    def report(self, *, devices: int, acks: list[float]) -> dict[str, Any]:
        """What the report gains: pace, ack latency across devices (each device's smoothed
        ack latency, ms), launches, cost, the timeline."""
        out: dict[str, Any] = dict(self.pace.describe())
        out["ack_latency_ms"] = summary([round(a * 1000, 1) for a in acks])
        if self.launches is not None:
            out.update(self.launches.report())
        if self.cost is not None:
            out["cost"] = self.cost.report(
                devices=devices, simulated_days=self.pace.simulated_days()
            )
        if self.sampler is not None:
            out["timeline"] = self.sampler.timeline.to_json()
        return out


def _safe_cpu(pid: int) -> float:
    try:
        return process_cpu_s(pid)
    except OSError:
        return 0.0
