"""The fleet run's timeline: one sample a second of what the devices, the gateway and the
broker say, for the report's charts and a live progress display.

It samples from the outside, so it works whether the gateway runs in the fleet's process or
as its own: the gateway over its HTTP API (`GET /v1/stats` with an operator token: signals
and batches stored, duplicates, bundles delivered), the broker over `$SYS/broker/clients/
connected` (when it publishes it), the devices through a probe the runner gives (devices
up, signals accepted, resends, reconnects, offers held), the faults from the run's fault
log. Gateway counters start from zero when the gateway restarts; the timeline keeps them
cumulative.

Bounded: at most `max_samples` samples; when full, every other one is dropped and the
interval doubles, so a long run keeps its whole span at a coarser step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiomqtt

from protocol.broker_url import parse_broker_url

log = logging.getLogger(__name__)

MAX_SAMPLES = 3_600
GATEWAY_KEYS = (
    "signals_stored",
    "batches_stored",
    "batches_duplicate",
    "messages_received",
    "device_bundle_receipts",
    "device_bundles_sent",
)
"""Gateway counters (`GET /v1/stats`) the timeline keeps, cumulative over restarts."""
SYS_CLIENTS = "$SYS/broker/clients/connected"

DeviceProbe = Callable[[], Awaitable[dict[str, int]]]
"""Sums over the devices: `devices_up`, `signals_accepted`, `batches_resent`, `reconnects`,
`offers_held` (whatever the runner can tell; missing keys are left out)."""
GatewayEndpoint = Callable[[], tuple[str, str] | None]
"""The gateway's base URL and an operator token now, or None while it is down."""


@dataclass(slots=True)
class Timeline:
    """Samples (dicts with `t_s`, seconds since the run began), bounded."""

    max_samples: int = MAX_SAMPLES
    interval_s: float = 1.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    thinned: int = 0
    """How many times the resolution was halved to stay within `max_samples`."""

    def add(self, sample: dict[str, Any]) -> None:
        self.samples.append(sample)
        if len(self.samples) > self.max_samples:
            self.samples = self.samples[::2]
            self.interval_s *= 2
            self.thinned += 1

    def to_json(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "thinned": self.thinned, "samples": self.samples}


class _Cumulative:
    """Counters that restart from zero (a gateway restart) kept as running totals."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._base: dict[str, int] = {}

    def update(self, raw: dict[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for key in GATEWAY_KEYS:
            value = raw.get(key)
            if not isinstance(value, int):
                continue
            if value < self._last.get(key, 0):  # a new gateway, counting from zero
                self._base[key] = self._base.get(key, 0) + self._last[key]
            self._last[key] = value
            out[key] = self._base.get(key, 0) + value
        return out


class Sampler:
    """`async with Sampler(...) as sampler:` samples every `interval_s` until the block ends;
    `sampler.timeline` holds what it saw."""

    def __init__(
        self,
        *,
        started: float,
        gateway: GatewayEndpoint,
        devices: DeviceProbe | None = None,
        faults: Callable[[], list[dict[str, Any]]] | None = None,
        broker: str | None = None,
        cpu: Callable[[], float] | None = None,
        pid: Callable[[], int | None] | None = None,
        interval_s: float = 1.0,
        max_samples: int = MAX_SAMPLES,
        progress: bool = False,
    ) -> None:
        """`cpu`: the gateway processes' CPU seconds so far (`simulators.cost`); `pid`: the
        gateway process now (a new one after a restart; None while it is down)."""
        self.timeline = Timeline(max_samples=max_samples, interval_s=interval_s)
        self._started = started
        self._gateway, self._devices, self._faults = gateway, devices, faults
        self._broker, self._cpu, self._pid = broker, cpu, pid
        self._cumulative = _Cumulative()
        self._broker_clients: int | None = None
        self._progress = progress
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self.last: dict[str, Any] = {}

    async def __aenter__(self) -> Sampler:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        self._tasks.append(asyncio.create_task(self._loop(), name="timeline"))
        if self._broker is not None:
            self._tasks.append(asyncio.create_task(self._sys(self._broker), name="timeline-sys"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            self.timeline.add(await self.sample())  # the last word: the drained state
        finally:
            if self._http is not None:
                await self._http.close()

    async def sample(self) -> dict[str, Any]:
        """One sample now (what could not be read is left out, not zero)."""
        out: dict[str, Any] = {"t_s": round(time.monotonic() - self._started, 2)}
        if self._devices is not None:
            out.update(await self._devices())
        out.update(self._cumulative.update(await self._stats()))
        if self._broker_clients is not None:
            out["broker_clients"] = self._broker_clients
        if self._faults is not None:
            events = self._faults()
            out["faults_begun"] = sum(e["event"] == "begins" for e in events)
            out["faults_active"] = out["faults_begun"] - sum(e["event"] == "ends" for e in events)
        if self._cpu is not None:
            out["gateway_cpu_s"] = round(self._cpu(), 3)
        if self._pid is not None and (pid := self._pid()) is not None:
            out["gateway_pid"] = pid
        self.last = out
        return out

    async def _stats(self) -> dict[str, Any]:
        endpoint = self._gateway()
        if endpoint is None or self._http is None or self._http.closed:
            return {}
        base, token = endpoint
        try:
            async with self._http.get(
                f"{base}/v1/stats", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                if resp.status != 200:
                    return {}
                body: dict[str, Any] = await resp.json()
                return body
        except (aiohttp.ClientError, TimeoutError):
            return {}  # down or restarting: the gap shows on the timeline

    async def _loop(self) -> None:
        live = _Live() if self._progress else None
        try:
            while True:
                began = time.monotonic()
                self.timeline.add(await self.sample())
                if live is not None:
                    live.show(self.last)
                await asyncio.sleep(max(0.0, self.timeline.interval_s - (time.monotonic() - began)))
        finally:
            if live is not None:
                live.stop()

    async def _sys(self, url: str) -> None:
        """The broker's connected clients, while it publishes them (Mosquitto with
        `sys_interval`); reconnects when the broker restarts."""
        target = parse_broker_url(url)
        while True:
            try:
                async with aiomqtt.Client(target.host, target.port) as client:
                    await client.subscribe(SYS_CLIENTS)
                    async for message in client.messages:
                        with contextlib.suppress(ValueError, TypeError):
                            self._broker_clients = int(bytes(message.payload).decode())
            except aiomqtt.MqttError:
                await asyncio.sleep(1.0)


class _Live:
    """The live progress display (rich), one table redrawn each sample."""

    ROWS = (
        ("t_s", "elapsed s"),
        ("devices_up", "devices up"),
        ("signals_accepted", "signals accepted"),
        ("signals_stored", "signals stored (gateway)"),
        ("offers_held", "offers held (devices)"),
        ("batches_resent", "resends"),
        ("reconnects", "reconnects"),
        ("faults_active", "faults active"),
        ("faults_begun", "faults injected"),
    )

    def __init__(self) -> None:
        from rich.live import Live  # noqa: PLC0415 - only with a display

        self._live = Live(refresh_per_second=2, transient=False)
        self._live.start()

    def show(self, sample: dict[str, Any]) -> None:
        from rich.table import Table  # noqa: PLC0415

        table = Table(title="edgemart fleet", show_header=False, box=None)
        for key, label in self.ROWS:
            table.add_row(label, str(sample.get(key, "-")))
        self._live.update(table)

    def stop(self) -> None:
        self._live.stop()
