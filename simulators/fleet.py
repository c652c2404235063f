"""`edgemart fleet`: many simulated households against one gateway, with faults, ending in
the loss accounting of every device (the faults and the verdict: `simulators.options.
FLEET_GUIDE`, which `edgemart fleet --help` prints)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from cloud_gateway.config import GatewaySettings
from protocol.broker_url import parse_broker_url
from simulators import fdlimit
from simulators.brokers import EmbeddedBroker, MosquittoProcess, free_port
from simulators.checker import Drops, account, check, coverage, device_digest
from simulators.demo import Operator
from simulators.faults import AgentProcess
from simulators.fleet_observe import Observation
from simulators.fleet_procs import GatewayProcess, SharedGateway, WorkerProcess
from simulators.fleet_social import fleet_groups, groups_ok
from simulators.fleet_worker import WorkerPlan
from simulators.household import CONSENT_ALL
from simulators.netfault import PartitionProxy
from simulators.options import FAULTS, FleetOptions, fresh_root, sweepable
from simulators.pace import personas, world_size
from simulators.retained import clear_retained
from simulators.world import make_world

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FaultLog:
    """Each fault's beginning and end, in seconds since the start of the run."""

    started: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)

    def note(self, fault: str, what: str) -> None:
        at = round(time.monotonic() - self.started, 2)
        self.events.append({"fault": fault, "event": what, "at_s": at})
        log.info("fleet: %s %s at %.1fs", fault, what, at)


class _Cloud:
    """The broker (when embedded or private) and the gateway process, each able to go down
    and come back; or a shared gateway and broker that already run (`--gateway`)."""

    def __init__(self, options: FleetOptions, root: Path, topic_root: str) -> None:
        self._embedded = EmbeddedBroker() if options.broker is None else None
        self._mosquitto = (
            MosquittoProcess(str(root / "mosquitto"), max_files=fdlimit.hard_limit())
            if options.broker == "mosquitto"
            else None
        )
        own = self._embedded or self._mosquitto
        self.broker_url = own.url if own is not None else str(options.broker)
        self.gateway: GatewayProcess | SharedGateway
        self.http: aiohttp.ClientSession | None = None
        if options.gateway is not None:
            assert options.gateway_token_file is not None
            assert options.trust is not None
            token = options.gateway_token_file.read_text(encoding="utf-8").strip()
            self.gateway = SharedGateway(options.gateway, token, options.trust)
            return
        (root / "gateway").mkdir(parents=True, exist_ok=True)
        self.gateway = GatewayProcess(
            broker=self.broker_url,
            data_dir=root / "gateway",
            http_port=free_port(),
            topic_root=topic_root,
            log=root / "gateway.log",
        )

    async def start_broker(self) -> None:
        if self._embedded is not None:
            await self._embedded.__aenter__()
        if self._mosquitto is not None:
            await asyncio.to_thread(self._mosquitto.start)

    async def stop_broker(self) -> None:
        """Down as a broker goes down by accident: amqtt shuts down (its state is in memory),
        Mosquitto is killed with SIGKILL."""
        if self._embedded is not None:
            await self._embedded.__aexit__(None, None, None)
        if self._mosquitto is not None:
            await asyncio.to_thread(self._mosquitto.kill)

    async def start_gateway(self) -> None:
        await asyncio.to_thread(self.gateway.start)

    async def crash_gateway(self) -> None:
        """SIGKILL, as a gateway host dies (its counters read just before)."""
        assert self.http is not None
        await self.gateway.crash(self.http)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_Cloud]:
        await self.start_broker()
        try:
            async with aiohttp.ClientSession() as self.http:
                await self.start_gateway()
                try:
                    yield self
                finally:
                    await self.gateway.stop(self.http)
        finally:
            await self.stop_broker()


class _CrashDevices:
    """TVs run as real `edgemart agent run` processes, used over their local HTTP API the way
    an app on the TV would: the devices `agent-kill` kills."""

    def __init__(
        self, count: int, broker: str, trust: Path, root: Path, http: aiohttp.ClientSession
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.agents = [
            AgentProcess(
                profile="tv",
                device_id=f"crash-tv-{i:02d}",
                broker=broker,
                data_dir=root / f"crash-tv-{i:02d}",
                api_port=free_port(),
                trust=trust,
                log=root / f"crash-tv-{i:02d}.log",
            )
            for i in range(count)
        ]
        self.accepted: dict[str, list[str]] = {a.device_id: [] for a in self.agents}
        self._http = http
        self._apps: dict[str, Operator] = {}
        """Each TV's app, with the admin token its agent wrote on its first start."""
        self._sent = 0

    async def start(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(a.start) for a in self.agents))
        for a in self.agents:
            token = await asyncio.to_thread(a.token)
            self._apps[a.device_id] = Operator(self._http, a.api, token)

    async def consent(self) -> None:
        for app in self._apps.values():
            await app.call("PUT", "/v1/consent", {"purposes": CONSENT_ALL})

    def kill(self) -> None:
        for agent in self.agents:
            agent.kill()

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()

    async def use(self, signals: int, per_request: int = 25) -> None:
        async def one(agent: AgentProcess) -> None:
            for start in range(0, signals, per_request):
                chunk = [
                    {"kind": "content_view", "attrs": {"category": "tv_streaming", "n": n}}
                    for n in range(
                        self._sent + start, self._sent + min(signals, start + per_request)
                    )
                ]
                app = self._apps[agent.device_id]
                body = await app.call("POST", "/v1/signals", {"signals": chunk})
                self.accepted[agent.device_id].extend(body["ids"])

        await asyncio.gather(*(one(a) for a in self.agents if a.alive))
        self._sent += signals

    async def statuses(self) -> dict[str, dict[str, Any]]:
        return {device: await app.call("GET", "/v1/status") for device, app in self._apps.items()}

    async def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s["outbox_depth"] == 0 for s in (await self.statuses()).values()):
                return True
            await asyncio.sleep(0.1)
        return False


async def run_fleet(options: FleetOptions) -> dict[str, Any]:
    """The run under its own topic root; on a broker it does not own, what it left retained
    there is cleared at the end, also when it fails or is cancelled (not under a shared
    gateway's root: that is the gateway's and the other shards')."""
    topic_root = options.topic_root or fresh_root("fleet")
    outside = options.broker not in (None, "mosquitto") and sweepable(topic_root)
    outside = outside and options.gateway is None
    try:
        report = await _run_fleet(options, topic_root)
    finally:
        if outside:
            try:
                await asyncio.shield(clear_retained(str(options.broker), topic_root))
            except (aiomqtt.MqttError, OSError) as exc:
                log.warning("could not clear the retained messages under %s: %s", topic_root, exc)
    report["topic_root"] = topic_root
    return report


async def _run_fleet(options: FleetOptions, topic_root: str) -> dict[str, Any]:
    started = time.monotonic()
    observe = Observation(options, make_world(options.seed, households=world_size(options)))
    faults = FaultLog()
    with contextlib.ExitStack() as stack:
        root = options.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        cloud = _Cloud(options, root, topic_root)
        async with cloud.running(), contextlib.AsyncExitStack() as devices:
            assert cloud.http is not None
            http = cloud.http
            gateway = cloud.gateway
            device_broker = cloud.broker_url
            proxy: PartitionProxy | None = None
            if "partition" in options.faults:
                target = parse_broker_url(cloud.broker_url)
                proxy = await devices.enter_async_context(PartitionProxy(target.port, target.host))
                device_broker = f"mqtt://127.0.0.1:{proxy.port}"
            lan = None
            if options.lan:
                lan = {"api": gateway.api, "token": await asyncio.to_thread(gateway.token)}
            workers = _workers(options, observe, device_broker, gateway.trust_path, root, lan)
            devices.push_async_callback(_stop_workers, workers)
            await _start_workers(workers)
            start_s = time.monotonic() - started
            crash: _CrashDevices | None = None
            if "agent-kill" in options.faults and options.runs_crash_devices:
                crash = _CrashDevices(
                    options.crash_devices,
                    device_broker,
                    gateway.trust_path,
                    root / "processes",
                    http,
                )
                devices.callback(crash.stop)
                await crash.start()
                await crash.consent()
            plan = _FaultPlan(options, cloud, proxy, crash, faults, workers=workers)
            pause = options.duration_s / options.rounds
            token = await asyncio.to_thread(gateway.token)
            gateway_db = (
                GatewaySettings(broker=cloud.broker_url, data_dir=gateway.data_dir).db_path
                if isinstance(gateway, GatewayProcess)
                else None  # a shared gateway's database is not this run's cost
            )
            async with observe.running(
                started=started,
                gateway=lambda: (gateway.api, token) if gateway.up else None,
                gateway_pid=lambda: gateway.pid,
                gateway_cpu=gateway.cpu_s,
                agents_cpu=lambda: sum(w.read_cpu() for w in workers),
                gateway_db=gateway_db,
                devices=functools.partial(_probe, workers),
                watch=_Watch(workers),
                faults=lambda: faults.events,
                fault_actions=plan.timed(options.fault_times),
                broker=None if options.broker is None else cloud.broker_url,  # amqtt: no $SYS
            ):
                for round_ in range(options.rounds):
                    await plan.at_round(round_)
                    counts, crash_count = observe.counts(round_)
                    using: list[Coroutine[Any, Any, object]] = [
                        _use(w, counts, options.signals_per_round) for w in workers
                    ]
                    if crash is not None:
                        using.append(crash.use(crash_count))
                    await asyncio.gather(*using)
                    await asyncio.sleep(pause)
                social = None
                if options.group_buys is not None:
                    op = await _operator(cloud, http)
                    social = await fleet_groups(options, observe.world, workers, op)
                await observe.settle()
                draining = [_drained(w, options.drain_timeout) for w in workers]
                if crash is not None:
                    draining.append(crash.drain(options.drain_timeout))
                drained = all(await asyncio.gather(*draining))
            await asyncio.sleep(0.2)  # the last acks' commits are visible to the export
            seen: list[tuple[str, list[str], dict[str, Any]]] = []
            watched: dict[int, list[dict[str, Any]]] = {}
            for worker in workers:
                found, saw = await worker.collect(root / f"worker-{worker.index}.json")
                seen += found
                for launch, what in saw.items():
                    watched.setdefault(launch, []).append(what)
            if crash is not None:
                statuses = await crash.statuses()
                seen += [(d, crash.accepted[d], statuses[d]) for d in crash.accepted]
            report = await _report(cloud, seen, drained, http)
    acks = [s["uplink"]["ack_latency_s"] for _, _, s in seen if s["uplink"].get("ack_latency_s")]
    agents = sum(w.devices for w in workers)
    report.update(observe.report(devices=len(seen), agents=agents, acks=acks, watched=watched))
    report["faults"] = faults.events
    if social is not None:
        report["social"] = social
    report["households"] = len(options.shard_households())
    report["broker"] = "embedded amqtt" if options.broker is None else options.broker
    report["duration_s"] = round(time.monotonic() - started, 2)
    report["start_s"] = round(start_s, 2)
    report["ramp_devices_per_s"] = options.ramp
    report["procs"] = len(workers)
    report["shard"] = options.shard_label
    report["gateway"] = options.gateway or "own process"
    if options.lan:
        report["lan"] = lan_summary([h for w in workers for h in w.lan])
        report["lan"]["coordinators_killed"] = plan.lan_killed
        report["lan"]["coordinators_interim"] = plan.lan_interim
        report["lan"]["rogues"] = plan.lan_rogues
        report["lan"]["rogues_got"] = plan.lan_rogues_got
    return report


def _workers(  # noqa: PLR0917 - the parts of a plan, by name
    options: FleetOptions,
    observe: Observation,
    broker: str,
    trust: Path,
    root: Path,
    lan: dict[str, str] | None = None,
) -> list[WorkerProcess]:
    """The shard's households dealt round-robin over the worker processes, each with its
    personas and devices (the mix, drawn for the whole fleet) and its share of the ramp."""
    households = options.shard_households()
    chosen = personas(options)
    procs = max(1, min(fdlimit.workers_needed(options), len(households)))
    ramp = None if options.ramp is None else options.ramp / procs
    (root / "workers").mkdir(parents=True, exist_ok=True)
    return [
        WorkerProcess(
            k,
            WorkerPlan(
                households=mine,
                personas=[chosen[i] for i in mine],
                devices=[[dataclasses.asdict(d) for d in observe.fleet[i]] for i in mine],
                seed=options.seed,
                world_households=world_size(options),  # the same world for every shard
                broker=broker,
                trust=str(trust),
                root=str(root),
                ramp=ramp,
                lan=lan,
            ),
            root / "workers" / f"worker-{k}.log",
        )
        for k in range(procs)
        if (mine := households[k::procs])
    ]


async def _start_workers(workers: list[WorkerProcess]) -> None:
    results = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _stop_workers(workers: list[WorkerProcess]) -> None:
    """Concurrently, each at its ramp (before: one device after another, 90 s for 400)."""
    await asyncio.gather(*(w.stop() for w in workers))


async def _use(worker: WorkerProcess, counts: dict[str, int] | None, signals: int) -> None:
    """A round on `worker`'s devices: `signals` each, or each its own count (world pace)."""
    if counts is None:
        await worker.call("use", signals=signals)
        return
    ids = [spec["device_id"] for specs in worker.plan.devices for spec in specs]
    await worker.call("use", counts={d: counts.get(d, 0) for d in ids})


async def _drained(worker: WorkerProcess, timeout: float) -> bool:
    return bool((await worker.call("drain", timeout=timeout))["drained"])


async def _probe(workers: list[WorkerProcess]) -> dict[str, int]:
    """The timeline's device sums (`simulators.timeline.DeviceProbe`) over the workers: each
    sums its own devices (at most once a second)."""
    sums: dict[str, int] = {}
    for part in await asyncio.gather(*(w.call("probe") for w in workers)):
        for key, value in part.items():
            sums[key] = sums.get(key, 0) + int(value)
    return sums


class _Watch:
    """A launch followed on every worker's devices (`simulators.launches.LaunchWatch`)."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self._workers = workers

    async def begin(self, launch: int) -> None:
        await asyncio.gather(*(w.call("watch", launch=launch) for w in self._workers))

    async def followed(self, launch: int) -> bool:
        answers = await asyncio.gather(*(w.call("followed", launch=launch) for w in self._workers))
        return all(a["done"] for a in answers)


class _FaultPlan:
    """Which fault begins at which round (one a round from the first of the middle third),
    and the round where all of them end (the first of the last third), last begun first."""

    def __init__(
        self,
        options: FleetOptions,
        cloud: _Cloud,
        proxy: PartitionProxy | None,
        crash: _CrashDevices | None,
        log: FaultLog,
        *,
        workers: list[WorkerProcess],
    ) -> None:
        first, self.end = options.rounds // 3, 2 * options.rounds // 3
        chosen = [f for f in FAULTS if f in options.faults and not options.fault_times]
        self.begin = {fault: min(first + i, self.end - 1) for i, fault in enumerate(chosen)}
        self._cloud, self._proxy, self._crash, self._log = cloud, proxy, crash, log
        self._workers = workers
        self.lan_killed: list[str] = []
        """With `coordinator-kill`: the coordinators stopped (each household's, per worker)."""
        self.lan_interim: list[str] = []
        """... and who coordinated their households when they came back (the takeovers)."""
        self.lan_rogues: list[str] = []
        """With `coordinator-spoof`: the rogue hubs, and what they got (0s are right)."""
        self.lan_rogues_got: dict[str, int] = {}

    async def at_round(self, round_: int) -> None:
        for fault, begins in self.begin.items():
            if begins == round_:
                await self._down(fault)
        if round_ == self.end:
            for fault in reversed(self.begin):
                await self._up(fault)

    def timed(
        self, times: tuple[tuple[str, float, float], ...]
    ) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        """The scenario's fault times instead of the round plan: (at s, action) for each
        fault's beginning and end, in seconds from the first usage round."""
        return [
            action
            for fault, at_s, for_s in times
            for action in (
                (at_s, functools.partial(self._down, fault)),
                (at_s + for_s, functools.partial(self._up, fault)),
            )
        ]

    async def _down(self, fault: str) -> None:
        if fault == "gateway-restart":
            await self._cloud.crash_gateway()
        elif fault == "broker-restart":
            await self._cloud.stop_broker()
        elif fault == "agent-kill" and self._crash is not None:
            self._crash.kill()
        elif fault == "coordinator-kill":
            await self._lan("kill")
        elif fault == "coordinator-spoof":
            await self._lan("spoof")
        elif self._proxy is not None:
            self._proxy.partition()
        self._log.note(fault, "begins")

    async def _up(self, fault: str) -> None:
        if fault == "gateway-restart":
            await self._cloud.start_gateway()
        elif fault == "broker-restart":
            await self._cloud.start_broker()
        elif fault == "agent-kill" and self._crash is not None:
            await self._crash.start()
        elif fault == "coordinator-kill":
            await self._lan("restore")
        elif fault == "coordinator-spoof":
            await self._lan("unspoof")
        elif self._proxy is not None:
            self._proxy.heal()
        self._log.note(fault, "ends")

    async def _lan(self, action: str) -> None:
        """`coordinator-kill`: each worker's households lose (`kill`) or get back (`restore`)
        their coordinator; the others re-elect meanwhile. `coordinator-spoof`: a rogue hub
        joins each household's segment (`spoof`) and leaves (`unspoof`)."""
        answers = await asyncio.gather(*(w.call("lan", action=action) for w in self._workers))
        if action == "kill":
            self.lan_killed += [d for a in answers for d in a["devices"]]
        elif action == "restore":
            self.lan_interim += [d for a in answers for d in a["interim"]]
        elif action == "spoof":
            self.lan_rogues += [d for a in answers for d in a["devices"]]
        else:
            for a in answers:
                for name, value in a["rogues_got"].items():
                    self.lan_rogues_got[name] = self.lan_rogues_got.get(name, 0) + value


async def _operator(cloud: _Cloud, http: aiohttp.ClientSession) -> Operator:
    token = await asyncio.to_thread(cloud.gateway.token)
    return Operator(http, cloud.gateway.api, token)


async def _report(
    cloud: _Cloud,
    seen: list[tuple[str, list[str], dict[str, Any]]],
    drained: bool,
    http: aiohttp.ClientSession,
) -> dict[str, Any]:
    """`seen`: each device's id, the ids it accepted, and its status (`GET /v1/status`)."""
    gateway = cloud.gateway
    operator = await _operator(cloud, http)
    now = await gateway.stats(http)
    accepted = {device: ids for device, ids, _ in seen}
    stored: dict[str, list[str]] = {}
    covered: dict[str, int] = {}
    drops: dict[str, Drops] = {}
    gate = asyncio.Semaphore(EXPORTS_AT_ONCE)

    async def read(device: str, status: dict[str, Any]) -> None:
        async with gate:
            export = await operator.call("GET", f"/v1/devices/{device}/export")
        stored[device] = [s["id"] for s in export.get("signals", [])]
        covered[device] = coverage(export)
        drops[device] = Drops.from_status(status)

    await asyncio.gather(*(read(device, status) for device, _, status in seen))
    loss = check(accepted, stored)
    statuses = {device: status for device, _, status in seen}
    held = {device: Drops.held(status) for device, status in statuses.items()}
    books = account(accepted, stored, drops, covered, held)

    def total(counter: str) -> int:
        """Summed over devices; a process device counts since its last start."""
        return sum(int(status["counters"].get(counter, 0)) for _, _, status in seen)

    books_of_run = {
        "devices": len(seen),
        "signals_accepted": books.accepted,
        "signals_stored": books.stored,
        "signals_in_aggregates": books.aggregated,
        "signals_dropped_on_purpose": books.evicted + books.expired + books.withdrawn,
        "signals_lost": books.lost,
        "signals_undelivered": books.undelivered,
        "undelivered_devices": [
            {"device": device, "signals": n, "why": why_undelivered(statuses[device])}
            for device, n in books.undelivered_by_device[:MAX_NAMED]
        ],
        "undelivered_device_count": len(books.undelivered_by_device),
        "signals_duplicated": loss.duplicated,
        "signals_unexpected": loss.unexpected,
        "lost_ids_sample": list(loss.lost_ids) if books.lost else [],
        "drained": drained,
        "device_reconnects": total("link_connects") - len(seen),
        "batches_resent": total("batches_resent"),
        "gateway_duplicates_ignored": gateway.counters["batches_duplicate"]
        + int(now.get("batches_duplicate", 0)),
        "accounting": books.line(),
        "accounting_counts": books.counts(),
        "device_digest": device_digest(accepted),
    }
    if isinstance(gateway, SharedGateway):  # its counters are the whole fleet's, not the run's
        del books_of_run["gateway_duplicates_ignored"]
    return books_of_run


EXPORTS_AT_ONCE = 8
"""Device exports read from the gateway at the same time for the report."""
MAX_NAMED = 50
"""Undelivered devices named in the report (all are counted)."""


def why_undelivered(status: dict[str, Any]) -> str:
    """Why a device still holds signals at the end, from its status."""
    acc = status.get("accounting") or {}
    if status.get("link") != "connected":
        return f"link {status.get('link')} ({status.get('broker')})"
    if acc.get("holding"):
        return f"uplink holding: {acc.get('uplink_bytes_today')} bytes sent today, over budget"
    if not ((status.get("consent") or {}).get("purposes") or {}).get("analytics", True):
        return "no analytics consent: nothing may leave"
    if (status.get("disk") or {}).get("full"):
        return "disk full: no new batch can be cut"
    if status.get("in_flight"):
        uplink = status.get("uplink") or {}
        return (
            f"{status['in_flight']} batches sent, not acked yet"
            f" (ack timeout {uplink.get('ack_timeout_s')} s)"
        )
    return "waiting in the outbox to be cut into a batch"


def lan_summary(households: list[dict[str, Any]]) -> dict[str, Any]:
    """With `--lan`: how many households agreed on one coordinator, and the household
    counters summed over every household (sessions, refusals, hold fallbacks, ...)."""
    counters: dict[str, int] = {}
    for h in households:
        for name, value in h.get("counters", {}).items():
            counters[name] = counters.get(name, 0) + int(value)
    return {
        "households": len(households),
        "settled": sum(1 for h in households if h.get("settled")),
        "coordinated": sum(1 for h in households if h.get("coordinator")),
        "counters": dict(sorted(counters.items())),
        "per_household": households,
    }


def succeeded(report: dict[str, Any]) -> bool:
    return (
        report["signals_lost"] == 0
        and report["signals_duplicated"] == 0
        and report["signals_unexpected"] == 0
        and bool(report["drained"])
        and groups_ok(report.get("social"))
    )
