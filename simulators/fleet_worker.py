"""One worker process of `edgemart fleet`: many households of real agents (hub, TV, two
phones each) in one event loop, their stores on one shared `StorePool`, driven by the fleet
process over JSON lines (`python -m simulators.fleet_worker`, spawned by
`simulators.fleet_procs.WorkerProcess`).

The first line on stdin is the worker's plan (`WorkerPlan`); each further line is a command
and gets exactly one answer line on stdout:

- `{"cmd": "use", "signals": N}`: every device sends N signals -> `{"ok": true}`;
- `{"cmd": "drain", "timeout": S}` -> `{"drained": bool}`;
- `{"cmd": "watch"}`: note when each device first has verified offers -> `{"ok": true}`;
- `{"cmd": "collect", "path": P}`: each device's id, accepted ids and status, and when it
  had the offers, written to P as JSON (tens of MB at 5,000 devices: a file, not the pipe)
  -> `{"devices": N}`;
- `{"cmd": "stop"}`: every household stopped at the plan's pace -> `{"stopped": true}`.

After the plan, the first answer is `{"ready": true, "start_s": S}` (every household up), or
`{"error": "..."}` (the file-descriptor refusal, a household that did not start). The agents'
logs go to stderr, never onto the answer stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from agent.store.thread import StorePool
from simulators import fdlimit
from simulators.household import Household
from simulators.options import DEVICES_PER_HOUSEHOLD
from simulators.world import make_world

log = logging.getLogger(__name__)

STORE_THREADS = 4
"""The store threads every agent of one worker shares (`agent.store.thread.StorePool`)."""
WATCH_S = 0.05
"""How often a worker looks for devices that have received a launched campaign's offers."""
STARTING_AT_ONCE = 16
"""Households one worker starts (or stops) at the same moment, whatever the ramp."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one worker runs: its households (indices into the world of `world_households`
    made from `seed`, so every worker and shard sees the same world) and where."""

    households: list[int]
    seed: int
    world_households: int
    broker: str
    trust: str
    root: str
    ramp: float | None
    """Devices this worker starts (and stops) per second; None: as fast as it can."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> WorkerPlan:
        return cls(**json.loads(line))


class Worker:
    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.pool = StorePool(STORE_THREADS)
        world = make_world(plan.seed, households=plan.world_households)
        self.households = [
            Household(
                world,
                index,
                broker=plan.broker,
                trust=Path(plan.trust),
                data_dir=Path(plan.root) / "devices",
                seed=plan.seed + index,
                store_pool=self.pool,
            )
            for index in plan.households
        ]
        self.up: list[Household] = []
        self.offer_at: dict[str, float] = {}
        """Device -> when (`time.time()`) it first counted a verified offer."""
        self._watching: asyncio.Task[None] | None = None

    async def _paced(self, work: str) -> None:
        """Every household entered (`start`) or left (`stop`) concurrently, at most
        `STARTING_AT_ONCE` at a time, paced at the plan's ramp."""
        gate = asyncio.Semaphore(STARTING_AT_ONCE)
        step = DEVICES_PER_HOUSEHOLD / self.plan.ramp if self.plan.ramp else 0.0
        begun = time.monotonic()

        async def one(i: int, household: Household) -> None:
            await asyncio.sleep(max(0.0, begun + i * step - time.monotonic()))
            async with gate:
                if work == "start":
                    await household.__aenter__()
                    self.up.append(household)
                else:
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

    async def stop(self) -> None:
        await self._paced("stop")
        await asyncio.to_thread(self.pool.shutdown)

    async def use(self, signals: int) -> None:
        await asyncio.gather(*(hh.use(signals) for hh in self.households))

    async def drain(self, timeout: float) -> bool:
        return all(await asyncio.gather(*(hh.drain(timeout) for hh in self.households)))

    def watch(self) -> None:
        """Note when each device first has verified offers (after a campaign launch), one
        sweep over this worker's agents every `WATCH_S` (one timer, not one per device)."""

        async def sweep() -> None:
            runs = [run for hh in self.households for run in hh.runs]
            while len(self.offer_at) < len(runs):
                now = time.time()
                for run in runs:
                    device = run.spec.device_id
                    if device not in self.offer_at and run.agent.counters.get("offers_verified"):
                        self.offer_at[device] = now
                await asyncio.sleep(WATCH_S)

        if self._watching is None:
            self._watching = asyncio.create_task(sweep())

    def collect(self) -> dict[str, Any]:
        if self._watching is not None:
            self._watching.cancel()
        seen = [
            (run.spec.device_id, run.accepted, run.agent.status())
            for hh in self.households
            for run in hh.runs
        ]
        return {"seen": seen, "offer_at": self.offer_at}


async def serve(plan: WorkerPlan, answers: IO[str]) -> None:
    def answer(body: dict[str, Any]) -> None:
        answers.write(json.dumps(body) + "\n")
        answers.flush()

    devices = len(plan.households) * DEVICES_PER_HOUSEHOLD
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
    while line := await asyncio.to_thread(sys.stdin.readline):
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "use":
            await worker.use(int(command["signals"]))
            answer({"ok": True})
        elif cmd == "drain":
            answer({"drained": await worker.drain(float(command["timeout"]))})
        elif cmd == "watch":
            worker.watch()
            answer({"ok": True})
        elif cmd == "collect":
            collected = worker.collect()
            await asyncio.to_thread(
                Path(command["path"]).write_text, json.dumps(collected), encoding="utf-8"
            )
            answer({"devices": len(collected["seen"])})
        elif cmd == "stop":
            break
        else:
            answer({"error": f"unknown command {cmd!r}"})
    await worker.stop()
    answer({"stopped": True})


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
