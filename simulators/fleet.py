"""`edgemart fleet`: a QA run of many simulated households against one gateway, with faults,
ending in the loss accounting of every device.

Every device is the real agent (in this process, on its own SQLite files), every signal goes
through the broker to the gateway and is checked against its export. Faults begin in the
middle third of the run, one a round in this order, while the households keep using their
devices, and all end with it:

- `gateway-restart`: the gateway stops; the broker queues what devices send for its session;
- `broker-restart`: the embedded broker stops, losing what it held in memory (sessions, the
  queue kept for the stopped gateway), and starts again on the same port (not with
  `--broker`: a broker this run does not own cannot be restarted by it); devices send again
  what the gateway never acknowledged;
- `partition`: the devices' network goes dark without closing a socket (a dead Wi-Fi link;
  `simulators.netfault.PartitionProxy` between every device and the broker), then comes back.

The verdict (`succeeded`): no accepted signal lost, none stored twice, nothing unexpected,
every device drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cloud_gateway.auth import create_token
from cloud_gateway.config import GatewaySettings
from cloud_gateway.service import Gateway
from edgemart.broker import EmbeddedBroker
from protocol.broker_url import parse_broker_url
from simulators.checker import Drops, account, check, coverage
from simulators.demo import Operator
from simulators.household import Household
from simulators.netfault import PartitionProxy
from simulators.world import make_world

log = logging.getLogger(__name__)

FAULTS = ("gateway-restart", "broker-restart", "partition")
"""In the order they begin."""


@dataclass(frozen=True, slots=True)
class FleetOptions:
    households: int = 3
    """Each household is a hub, a TV and two phones (`simulators.household`)."""
    broker: str | None = None
    """mqtt://HOST:PORT of a running broker; None: an embedded amqtt broker."""
    data_dir: Path | None = None
    seed: int = 11
    rounds: int = 9
    signals_per_round: int = 20
    """Per device and round; the rounds are spread over `duration_s`."""
    duration_s: float = 12.0
    faults: tuple[str, ...] = ()
    drain_timeout: float = 90.0

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if "broker-restart" in self.faults and self.broker is not None:
            raise ValueError("broker-restart needs the embedded broker (no --broker)")
        if self.households < 1 or self.rounds < 3:
            raise ValueError("need at least 1 household and 3 rounds")


@dataclass(slots=True)
class FaultLog:
    """What was injected, when (seconds since the start), and for how long."""

    started: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)

    def note(self, fault: str, what: str) -> None:
        at = round(time.monotonic() - self.started, 2)
        self.events.append({"fault": fault, "event": what, "at_s": at})
        log.info("fleet: %s %s at %.1fs", fault, what, at)


class _Cloud:
    """The broker (when embedded) and the gateway, each able to go down and come back."""

    def __init__(self, options: FleetOptions, root: Path) -> None:
        self._embedded = EmbeddedBroker() if options.broker is None else None
        self.broker_url = options.broker or (self._embedded.url if self._embedded else "")
        self.settings = GatewaySettings(
            broker=self.broker_url, data_dir=root / "gateway", http_port=0
        )
        self.gateway: Gateway | None = None
        self.counters: Counter[str] = Counter()
        """The counters of gateways that were stopped (each start counts from zero)."""

    async def start_broker(self) -> None:
        if self._embedded is not None:
            await self._embedded.__aenter__()

    async def stop_broker(self) -> None:
        if self._embedded is not None:
            await self._embedded.__aexit__(None, None, None)

    async def start_gateway(self) -> Gateway:
        gateway = Gateway(self.settings)
        self.gateway = await gateway.__aenter__()
        return gateway

    async def stop_gateway(self) -> None:
        if self.gateway is not None:
            gateway, self.gateway = self.gateway, None
            await gateway.__aexit__(None, None, None)
            self.counters.update(gateway.counters)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_Cloud]:
        await self.start_broker()
        try:
            await self.start_gateway()
            try:
                yield self
            finally:
                await self.stop_gateway()
        finally:
            await self.stop_broker()


async def run_fleet(options: FleetOptions) -> dict[str, Any]:
    started = time.monotonic()
    world = make_world(options.seed, households=max(options.households + 1, 8))
    faults = FaultLog()
    with contextlib.ExitStack() as stack:
        root = options.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        cloud = _Cloud(options, root)
        async with cloud.running(), contextlib.AsyncExitStack() as devices:
            device_broker = cloud.broker_url
            proxy: PartitionProxy | None = None
            if "partition" in options.faults:
                target = parse_broker_url(cloud.broker_url)
                proxy = await devices.enter_async_context(PartitionProxy(target.port, target.host))
                device_broker = f"mqtt://127.0.0.1:{proxy.port}"
            assert cloud.gateway is not None
            households = [
                await devices.enter_async_context(
                    Household(
                        world,
                        index,
                        broker=device_broker,
                        trust=cloud.gateway.trust_path,
                        data_dir=root / "devices",
                        seed=options.seed + index,
                    )
                )
                for index in range(options.households)
            ]
            plan = _FaultPlan(options, cloud, proxy, faults)
            pause = options.duration_s / options.rounds
            for round_ in range(options.rounds):
                await plan.at_round(round_)
                await asyncio.gather(*(hh.use(options.signals_per_round) for hh in households))
                await asyncio.sleep(pause)
            drained = all(
                await asyncio.gather(*(hh.drain(options.drain_timeout) for hh in households))
            )
            await asyncio.sleep(0.2)  # the last acks' commits are visible to the export
            report = await _report(cloud, households, drained)
    report["faults"] = faults.events
    report["households"] = options.households
    report["broker"] = "embedded amqtt" if options.broker is None else options.broker
    report["duration_s"] = round(time.monotonic() - started, 2)
    return report


class _FaultPlan:
    """Which fault begins at which round (one a round from the first of the middle third),
    and the round where all of them end (the first of the last third), last begun first."""

    def __init__(
        self, options: FleetOptions, cloud: _Cloud, proxy: PartitionProxy | None, log: FaultLog
    ) -> None:
        first, self.end = options.rounds // 3, 2 * options.rounds // 3
        chosen = [f for f in FAULTS if f in options.faults]
        self.begin = {fault: min(first + i, self.end - 1) for i, fault in enumerate(chosen)}
        self._cloud, self._proxy, self._log = cloud, proxy, log

    async def at_round(self, round_: int) -> None:
        for fault, begins in self.begin.items():
            if begins == round_:
                await self._down(fault)
        if round_ == self.end:
            for fault in reversed(self.begin):
                await self._up(fault)

    async def _down(self, fault: str) -> None:
        if fault == "gateway-restart":
            await self._cloud.stop_gateway()
        elif fault == "broker-restart":
            await self._cloud.stop_broker()
        elif self._proxy is not None:
            self._proxy.partition()
        self._log.note(fault, "begins")

    async def _up(self, fault: str) -> None:
        if fault == "gateway-restart":
            await self._cloud.start_gateway()
        elif fault == "broker-restart":
            await self._cloud.start_broker()
        elif self._proxy is not None:
            self._proxy.heal()
        self._log.note(fault, "ends")


async def _report(cloud: _Cloud, households: list[Household], drained: bool) -> dict[str, Any]:
    gateway = cloud.gateway
    assert gateway is not None
    token = await asyncio.to_thread(create_token, cloud.settings.data_dir)
    runs = [run for hh in households for run in hh.runs]
    accepted = {run.spec.device_id: run.accepted for run in runs}
    stored: dict[str, list[str]] = {}
    covered: dict[str, int] = {}
    drops: dict[str, Drops] = {}
    async with aiohttp.ClientSession() as http:
        operator = Operator(http, f"http://127.0.0.1:{gateway.http_port}", token)
        for run in runs:
            export = await operator.call("GET", f"/v1/devices/{run.spec.device_id}/export")
            stored[run.spec.device_id] = [s["id"] for s in export.get("signals", [])]
            covered[run.spec.device_id] = coverage(export)
            drops[run.spec.device_id] = Drops.from_status(run.agent.status())
    loss = check(accepted, stored)
    books = account(accepted, stored, drops, covered)

    def total(counter: str) -> int:
        return sum(run.agent.counters.get(counter, 0) for run in runs)

    return {
        "devices": len(runs),
        "signals_accepted": books.accepted,
        "signals_stored": books.stored,
        "signals_in_aggregates": books.aggregated,
        "signals_dropped_on_purpose": books.evicted + books.expired + books.withdrawn,
        "signals_lost": books.lost,
        "signals_duplicated": loss.duplicated,
        "signals_unexpected": loss.unexpected,
        "lost_ids_sample": list(loss.lost_ids) if books.lost else [],
        "drained": drained,
        "device_reconnects": total("link_connects") - len(runs),
        "batches_resent": total("batches_resent"),
        "gateway_duplicates_ignored": (cloud.counters + gateway.counters)["batches_duplicate"],
        "accounting": books.line(),
    }


def succeeded(report: dict[str, Any]) -> bool:
    return (
        report["signals_lost"] == 0
        and report["signals_duplicated"] == 0
        and report["signals_unexpected"] == 0
        and bool(report["drained"])
    )
