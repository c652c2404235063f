"""One worker process of `edgemart fleet`: many households of real agents (the scenario's mix
of profiles and consent) in one event loop, their stores on one shared `StorePool`, driven by
the fleet process over JSON lines (`python -m simulators.fleet_worker`, spawned by
`simulators.fleet_procs.WorkerProcess`).

The first line on stdin is the worker's plan (`WorkerPlan`). Each further line is a command
with an `id`, and gets exactly one answer line carrying the same `id`; commands run
concurrently (a `probe` is answered while a `use` runs):

- `{"cmd": "use", "signals": N}`: every device sends N signals; `{"cmd": "use", "counts":
  {device: N}}`: each device its own count (the world pace) -> `{"ok": true}`;
- `{"cmd": "drain", "timeout": S}` -> `{"drained": bool}`;
- `{"cmd": "probe"}`: sums over this worker's devices (devices up, signals accepted, resends,
  reconnects, offers held), computed at most once a second -> those sums;
- `{"cmd": "watch", "launch": K}`: before campaign launch K, note each device's offers, then
  when each first holds more (a sweep, one timer for all) and, after the watch, how long
  one decision with them takes -> `{"ok": true}`;
- `{"cmd": "followed", "launch": K}` -> `{"done": bool, "waiting": N}`;
- `{"cmd": "collect", "path": P}`: each device's id, accepted ids and status, what the
  launch watches saw and (with `lan`) each household's LAN report, written to P as JSON
  (tens of MB at 5,000 devices: a file, not the pipe) -> `{"devices": N}`;
- `{"cmd": "lan", "action": "kill" | "restore"}` (with `lan`): each household's coordinator
  stopped as a killed process would, or the stopped ones back -> `{"devices": [ids]}` (and
  with `restore`, `"interim"`: who coordinated meanwhile); `"spoof" | "unspoof"`: a rogue
  hub in each household, or gone -> `{"devices": [ids]}` (and with `unspoof`, what the rogues
  got, summed);
- `{"cmd": "stop"}`: every household stopped at the plan's pace -> `{"stopped": true}`.

After the plan, the first answer is `{"ready": true, "start_s": S}` (every household up), or
`{"error": "..."}` (the file-descriptor refusal, a household that did not start). A command
that fails answers `{"id": ..., "error": "..."}`. The agents' logs go to stderr, never onto
the answer stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from agent.store.thread import StorePool
from simulators import fdlimit
from simulators.household import DeviceRun, DeviceSpec, Household
from simulators.household_lan import HouseholdLan
from simulators.world import make_world

log = logging.getLogger(__name__)

STORE_THREADS = 4
"""The store threads every agent of one worker shares (`agent.store.thread.StorePool`)."""
STARTING_AT_ONCE = 16
"""Households one worker starts (or stops) at the same moment, whatever the ramp."""
PROBE_S = 1.0
"""A probe computed at most this often (a timeline samples once a second)."""
WATCH_S = 60.0
"""How long a launch is watched; devices without the offers then are counted pending."""
SWEEP_S = 0.05
SWEEP_S_PER_DEVICE = 5e-5
"""Many devices are swept less often (1,250 devices: every 0.06 s)."""
MAX_DECISIONS = 5_000
"""Decisions timed per launch and worker."""
LAN_SETTLE_S = 10.0
"""With `lan`: how long a household's devices get to agree on one coordinator at collect."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one worker runs: its households (their ordinals in the fleet, their personas in
    the world of `world_households` made from `seed`, and their devices: the mix, drawn by
    the fleet process), so every worker and shard sees the same world, and where."""

    households: list[int]
    personas: list[int]
    devices: list[list[dict[str, Any]]]
    """Each household's `DeviceSpec`s, as dicts."""
    seed: int
    world_households: int
    broker: str
    trust: str
    root: str
    ramp: float | None
    """Devices this worker starts (and stops) per second; None: as fast as it can."""
    lan: dict[str, str] | None = None
    """`{"api": URL, "token": T}`: each household on the loopback LAN (`HouseholdLan`), its
    memberships issued by that gateway's `POST /v1/households/{id}/members`; None: no LAN."""

    @property
    def device_count(self) -> int:
        return sum(len(specs) for specs in self.devices)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> WorkerPlan:
        return cls(**json.loads(line))


@dataclass(slots=True)
class _Watch:
    """One launch followed on this worker's devices."""

    before: dict[str, int]
    offer_at: dict[str, float] = field(default_factory=dict)
    """Device -> when (`time.time()`, shared by the machine's processes) it held more offers."""
    decision_ms: list[float] = field(default_factory=list)
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "offer_at": self.offer_at,
            "pending": len(self.before) - len(self.offer_at),
            "decision_ms": self.decision_ms,
        }


class Worker:
    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.pool = StorePool(STORE_THREADS)
        world = make_world(plan.seed, households=plan.world_households)
        self.households = [
            Household(
                world,
                persona,
                broker=plan.broker,
                trust=Path(plan.trust),
                data_dir=Path(plan.root) / "devices",
                devices=[DeviceSpec(**spec) for spec in specs],
                seed=plan.seed + ordinal,
                store_pool=self.pool,
            )
            for ordinal, persona, specs in zip(
                plan.households, plan.personas, plan.devices, strict=True
            )
        ]
        self.up: list[Household] = []
        self.lans: dict[str, HouseholdLan] = {}
        """With `plan.lan`: each household's LAN, by household id."""
        self._http: aiohttp.ClientSession | None = None
        self.watches: dict[int, _Watch] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._probed: tuple[float, dict[str, int]] = (0.0, {})

    @property
    def runs(self) -> list[DeviceRun]:
        return [run for hh in self.households for run in hh.runs]

    async def _paced(self, work: str) -> None:
        """Every household entered (`start`) or left (`stop`) concurrently, at most
        `STARTING_AT_ONCE` at a time, paced at the plan's ramp."""
        gate = asyncio.Semaphore(STARTING_AT_ONCE)
        per = self.plan.device_count / max(1, len(self.households))
        step = per / self.plan.ramp if self.plan.ramp else 0.0
        begun = time.monotonic()

        async def one(i: int, household: Household) -> None:
            await asyncio.sleep(max(0.0, begun + i * step - time.monotonic()))
            async with gate:
                if work == "start":
                    await household.__aenter__()
                    self.up.append(household)
                    if self.plan.lan is not None:
                        await self._join_lan(household)
                else:
                    lan = self.lans.pop(household.persona.household_id, None)
                    if lan is not None:
                        await lan.__aexit__(None, None, None)
                    await household.__aexit__(None, None, None)

        targets = self.households if work == "start" else list(self.up)
        results = await asyncio.gather(
            *(one(i, hh) for i, hh in enumerate(targets)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                if work == "start":
                    raise result
                log.warning("fleet worker: a household did not stop cleanly: %s", result)

    async def start(self) -> None:
        await self._paced("start")

    async def _join_lan(self, household: Household) -> None:
        """`household` on the loopback LAN, as the demo runs it (`simulators.demo._lan`)."""
        assert self.plan.lan is not None
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        http, api = self._http, self.plan.lan["api"]
        headers = {"Authorization": f"Bearer {self.plan.lan['token']}"}

        async def issue(household_id: str, body: dict[str, Any]) -> dict[str, Any]:
            path = f"/v1/households/{household_id}/members"
            async with http.post(api + path, json=body, headers=headers) as resp:
                answer: dict[str, Any] = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise RuntimeError(f"POST {path} -> {resp.status}: {answer}")
                return answer

        lan = HouseholdLan(household, issue, Path(self.plan.trust))
        await lan.__aenter__()
        self.lans[household.persona.household_id] = lan
        await lan.share()

    async def lan_fault(self, action: str) -> dict[str, Any]:
        """`kill`: every household's coordinator crashed (`HouseholdLan.crash_coordinator`)
        -> their ids; `restore`: who coordinates meanwhile (the takeover: each household
        given `LAN_SETTLE_S` to agree on one), then the crashed ones back -> both lists."""
        lans = list(self.lans.values())
        if action == "kill":
            killed = await asyncio.gather(*(lan.crash_coordinator() for lan in lans))
            return {"devices": [d for d in killed if d is not None]}
        if action == "restore":
            await asyncio.gather(*(lan.settle(LAN_SETTLE_S) for lan in lans))
            interim = [c for lan in lans if (c := lan.coordinator()) is not None]
            back = await asyncio.gather(*(lan.restart() for lan in lans))
            return {"devices": [d for ds in back for d in ds], "interim": interim}
        if action == "spoof":
            rogues = await asyncio.gather(*(lan.spoof() for lan in lans))
            return {"devices": [d for d in rogues if d is not None]}
        if action == "unspoof":
            got: dict[str, int] = {}
            for one in await asyncio.gather(*(lan.unspoof() for lan in lans)):
                for name, value in one.items():
                    got[name] = got.get(name, 0) + value
            return {"devices": [], "rogues_got": got}
        raise ValueError(f"unknown lan action {action!r} (kill, restore, spoof, unspoof)")

    async def lan_reports(self) -> list[dict[str, Any]]:
        """Each household's LAN: its coordinator, whether everyone agrees on it (given
        `LAN_SETTLE_S`), its appliances and the household counters (`HouseholdLan.report`)."""

        async def one(household_id: str, lan: HouseholdLan) -> dict[str, Any]:
            settled = await lan.settle(LAN_SETTLE_S)
            return {"household_id": household_id, "settled": settled, **lan.report()}

        return list(await asyncio.gather(*(one(h, lan) for h, lan in self.lans.items())))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._paced("stop")
        if self._http is not None:
            await self._http.close()
        await asyncio.to_thread(self.pool.shutdown)

    async def use(self, signals: int | dict[str, int]) -> None:
        await asyncio.gather(*(hh.use(signals) for hh in self.households))

    async def drain(self, timeout: float) -> bool:
        return all(await asyncio.gather(*(hh.drain(timeout) for hh in self.households)))

    def probe(self) -> dict[str, int]:
        """Sums over this worker's devices (`simulators.timeline.DeviceProbe`'s keys), at
        most once every `PROBE_S`: one pass over in-memory state, no per-device list."""
        at, last = self._probed
        if last and time.monotonic() - at < PROBE_S:
            return last
        up = accepted = resent = connects = offers = 0
        runs = self.runs
        for run in runs:
            agent = run.agent
            up += agent.parts.link.connected.is_set()
            accepted += len(run.accepted)
            counters = agent.parts.metrics.counters
            resent += counters.get("batches_resent", 0)
            connects += counters.get("link_connects", 0)
            offers += len(agent.offers)
        sums = {
            "devices_up": up,
            "signals_accepted": accepted,
            "batches_resent": resent,
            "reconnects": max(0, connects - len(runs)),
            "offers_held": offers,
        }
        self._probed = (time.monotonic(), sums)
        return sums

    def watch(self, launch: int) -> None:
        """Follow launch `launch`: the offers each device holds now, then when it holds
        more, one sweep over this worker's agents at a time (one timer, not one per device)."""
        runs = {run.spec.device_id: run for run in self.runs}
        watch = _Watch({device: len(run.agent.offers) for device, run in runs.items()})
        self.watches[launch] = watch

        async def sweep() -> None:
            deadline = time.monotonic() + WATCH_S
            pause = max(SWEEP_S, len(runs) * SWEEP_S_PER_DEVICE)
            waiting = dict(watch.before)
            while waiting and time.monotonic() < deadline:
                now = time.time()
                got = [d for d, n in waiting.items() if len(runs[d].agent.offers) > n]
                for device in got:
                    del waiting[device]
                    watch.offer_at[device] = now
                await asyncio.sleep(pause)
            for device in list(watch.offer_at)[:MAX_DECISIONS]:  # after the sweep: no skew
                agent = runs[device].agent
                began = time.perf_counter()
                await agent.rank(surface=agent.settings.profile.surfaces[0], limit=3)
                watch.decision_ms.append(round((time.perf_counter() - began) * 1000, 2))
            watch.done = True

        self._tasks.append(asyncio.create_task(sweep()))

    def followed(self, launch: int) -> dict[str, Any]:
        watch = self.watches[launch]
        return {"done": watch.done, "waiting": len(watch.before) - len(watch.offer_at)}

    async def collect(self) -> dict[str, Any]:
        lan = await self.lan_reports()
        seen = [(run.spec.device_id, run.accepted, run.agent.status()) for run in self.runs]
        launches = {k: w.to_json() for k, w in self.watches.items()}
        return {"seen": seen, "launches": launches, "lan": lan}


async def _handle(worker: Worker, command: dict[str, Any]) -> dict[str, Any]:
    cmd = command["cmd"]
    if cmd == "use":
        signals = command.get("counts")
        await worker.use(int(command["signals"]) if signals is None else signals)
        return {"ok": True}
    if cmd == "drain":
        return {"drained": await worker.drain(float(command["timeout"]))}
    if cmd == "probe":
        return worker.probe()
    if cmd == "watch":
        worker.watch(int(command["launch"]))
        return {"ok": True}
    if cmd == "followed":
        return worker.followed(int(command["launch"]))
    if cmd == "lan":
        return await worker.lan_fault(str(command["action"]))
    if cmd in ("group_start", "group_join"):
        from simulators.fleet_social import device_social  # noqa: PLC0415

        household = worker.households[worker.plan.households.index(int(command["household"]))]
        return await device_social(household.runs, cmd, command)
    if cmd == "collect":
        collected = await worker.collect()
        await asyncio.to_thread(
            Path(command["path"]).write_text, json.dumps(collected), encoding="utf-8"
        )
        return {"devices": len(collected["seen"])}
    return {"error": f"unknown command {cmd!r}"}


async def serve(plan: WorkerPlan, answers: IO[str]) -> None:
    def answer(body: dict[str, Any]) -> None:
        answers.write(json.dumps(body) + "\n")  # one write, no await: lines never interleave
        answers.flush()

    devices = plan.device_count
    if refusal := fdlimit.ensure(devices, embedded_broker=False):
        answer({"error": f"worker of {devices} devices: {refusal}"})
        return
    worker = Worker(plan)
    started = time.monotonic()
    try:
        await worker.start()
    except Exception as exc:  # noqa: BLE001 - reported to the fleet process, which stops
        answer({"error": f"a household did not start: {exc!r}"})
        await worker.stop()
        return
    answer({"ready": True, "start_s": round(time.monotonic() - started, 2)})
    running: set[asyncio.Task[None]] = set()

    async def one(command: dict[str, Any]) -> None:
        try:
            body = await _handle(worker, command)
        except Exception as exc:  # the fleet process reports it
            log.exception("fleet worker: %s failed", command.get("cmd"))
            body = {"error": f"{command.get('cmd')}: {exc!r}"}
        answer({**body, "id": command.get("id")})

    stop_id = None
    while line := await asyncio.to_thread(sys.stdin.readline):
        command = json.loads(line)
        if command["cmd"] == "stop":
            stop_id = command.get("id")
            break
        task = asyncio.create_task(one(command))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running, return_exceptions=True)
    await worker.stop()
    answer({"stopped": True, "id": stop_id})


def main() -> None:
    """The answers keep the original stdout; anything else printed goes to stderr."""
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    plan = WorkerPlan.from_json(sys.stdin.readline())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(plan, answers))


if __name__ == "__main__":
    main()
