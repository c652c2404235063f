"""What a fleet run adds around its usage rounds, kept apart from the runner
(`simulators.fleet`, which calls it through a few hooks): the pace, the timed faults and
campaigns of a scenario, the timeline sampler and the cost meter, and what they add to the
report.

The agents run in worker processes: the runner gives the probes into them (the devices'
sums, `simulators.timeline.DeviceProbe`; the launch watch, `simulators.launches.
LaunchWatch`), the gateway process's pid and CPU, and the workers' CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from simulators.cost import CostMeter
from simulators.launches import DEFAULT_PLAN, Launches, LaunchWatch, summary, surfaces
from simulators.options import FleetOptions
from simulators.pace import Pace, fleet_devices, personas
from simulators.timeline import DeviceProbe, GatewayEndpoint, Sampler
from simulators.world import World

Action = Callable[[], Awaitable[None]]


async def at_times(started: float, actions: Sequence[tuple[float, Action]]) -> None:
    """Run each action at its time (seconds after `started`), in time order."""
    for at_s, action in sorted(actions, key=lambda a: a[0]):
        await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
        await action()


class Observation:
    """`async with Observation(...).running(...)`: sampling and the scenario's timed events
    from the first usage round until the devices drained."""

    def __init__(self, options: FleetOptions, world: World) -> None:
        self.options = options
        self.world = world
        self.pace = Pace(options, world)
        self.fleet = fleet_devices(options, world)
        """Every household's devices, all shards (`simulators.pace.fleet_devices`)."""
        self._devices = {
            spec.device_id: (world.persona(p), spec.profile)
            for p, specs in zip(personas(options), self.fleet, strict=False)
            for spec in specs
        }
        self._crash = world.persona(personas(options)[-1])
        self.sampler: Sampler | None = None
        self.launches: Launches | None = None
        self.cost: CostMeter | None = None
        self._started = time.monotonic()
        self._rounds_began = self._started
        self._tasks: list[asyncio.Task[None]] = []

    def counts(self, round_: int) -> tuple[dict[str, int] | None, int]:
        """Signals each device sends in `round_` (None at the stress pace: every device
        `signals_per_round`), and each crash TV (`agent-kill`: at the world pace, a TV of
        the world's next household after the fleet's). Drawn for the whole fleet, every
        shard's devices in household order, then the crash TVs when the run has them in
        any shard: shards of one seed draw what the unsharded run draws."""
        o = self.options
        if o.pace == "stress":
            return None, o.signals_per_round
        counts = self.pace.counts(round_, self._devices)
        crash = 0
        if "agent-kill" in o.faults:
            crash = self.pace.counts(round_, {"crash-tv": (self._crash, "tv")})["crash-tv"]
        return counts, crash

    @contextlib.asynccontextmanager
    async def running(
        self,
        *,
        started: float,
        gateway: GatewayEndpoint,
        gateway_pid: Callable[[], int | None],
        gateway_cpu: Callable[[], float],
        agents_cpu: Callable[[], float],
        gateway_db: Path | None,
        devices: DeviceProbe,
        watch: LaunchWatch,
        faults: Callable[[], list[dict[str, Any]]],
        fault_actions: Sequence[tuple[float, Action]] = (),
        broker: str | None = None,
    ) -> Any:
        """`gateway_pid`, `gateway_cpu`: the gateway process now (a new one after a
        restart) and the CPU of all of them; `agents_cpu`: the worker processes' CPU."""
        self._started, self._rounds_began = started, time.monotonic()
        self.cost = CostMeter(gateway_cpu, agents_cpu, gateway_db)
        await self.cost.start()
        self.sampler = Sampler(
            started=started,
            gateway=gateway,
            devices=devices,
            faults=faults,
            broker=broker,
            cpu=gateway_cpu,
            pid=gateway_pid,
            progress=self.options.progress,
        )
        self.launches = Launches(
            (self.options.campaigns or DEFAULT_PLAN) if self.options.launches_campaigns else (),
            self.world,
            surfaces(self.options.profiles),
            gateway=gateway,
            watch=watch,
        )
        self._tasks.append(asyncio.create_task(self.launches.run(self._rounds_began, started)))
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

    def report(
        self,
        *,
        devices: int,
        agents: int,
        acks: list[float],
        watched: Mapping[int, Sequence[Mapping[str, Any]]],
    ) -> dict[str, Any]:
        """What the report gains: pace, ack latency across devices (each device's smoothed
        ack latency, ms), launches (from what the workers' watches saw), cost, the
        timeline."""
        out: dict[str, Any] = dict(self.pace.describe())
        out["ack_latency_ms"] = summary([round(a * 1000, 1) for a in acks])
        if self.launches is not None:
            out.update(self.launches.report(watched))
        if self.cost is not None:
            out["cost"] = self.cost.report(
                devices=devices, agents=agents, simulated_days=self.pace.simulated_days()
            )
        if self.sampler is not None:
            out["timeline"] = self.sampler.timeline.to_json()
        return out
