"""`sim_idle_cpu_s_per_device_hour`: what an idle simulated device costs inside the fleet's
process (issue 16 item 1: "the same for the in-process simulator per device").

One process hosts `BENCH_SIM_IDLE_DEVICES` (default 200) real agents of the synthetic world's
households on one shared store pool, as a fleet worker does (`simulators.household.Household`,
`agent.store.thread.StorePool`), connected to a private Mosquitto and a gateway process, with
their consents given and nothing to send. Its CPU (`/proc/PID/stat`, every thread) is counted
after `BENCH_IDLE_SETTLE_SECONDS` (default 30) for `BENCH_IDLE_SECONDS` (default 600) and
divided by the devices. Baseline, side by side in the same run: one idle `edgemart agent run`
process (the figure `agent_idle_cpu_s_per_hour` measures alone), so the machine's load falls
on both alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.idle_bench import cpu_seconds
from bench.processes import broker_and_gateway
from bench.record import Record
from simulators.brokers import free_port
from simulators.faults import AgentProcess

HOST = """
import asyncio, contextlib, sys
from pathlib import Path
from agent.store.thread import StorePool
from simulators.household import Household
from simulators.world import make_world

async def main(broker, trust, root, households):
    world = make_world(7, households=households + 1)
    pool = StorePool()
    async with contextlib.AsyncExitStack() as stack:
        for index in range(households):
            await stack.enter_async_context(
                Household(world, index, broker=broker, trust=Path(trust),
                          data_dir=Path(root), seed=index, store_pool=pool)
            )
        print("ready", flush=True)
        await asyncio.sleep(10**6)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


def measure(devices: int, seconds: float, settle: float, tmp: Path) -> tuple[float, float, int]:
    """(CPU s per simulated device-hour, CPU s per hour of one agent process, devices)."""
    households = max(1, devices // 4)
    with broker_and_gateway(tmp) as (broker, trust):
        agent = AgentProcess(
            profile="tv",
            device_id="tv-idle-alone",
            broker=broker,
            data_dir=tmp / "alone",
            api_port=free_port(),
            trust=trust,
            log=tmp / "alone.log",
            env={"EDGEMART_CONSENT__ANALYTICS": "true"},
        )
        root = Path(__file__).resolve().parents[1]
        host = subprocess.Popen(
            [sys.executable, "-c", HOST, broker, str(trust), str(tmp / "sim"), str(households)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=(tmp / "sim.log").open("wb"),
            text=True,
        )
        try:
            agent.start()
            assert host.stdout is not None
            if host.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the simulated devices did not start (log: {tmp / 'sim.log'})")
            time.sleep(settle)
            pids = [host.pid, agent.proc.pid if agent.proc is not None else -1]
            before = [cpu_seconds(pid) for pid in pids]
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            if host.poll() is not None or not agent.alive:
                raise RuntimeError("a measured process died during the run")
        finally:
            host.kill()
            host.wait()
            agent.stop()
    hosted = households * 4
    return used[0] * 3600.0 / elapsed / hosted, used[1] * 3600.0 / elapsed, hosted


def run() -> list[Record]:
    devices = int(os.environ.get("BENCH_SIM_IDLE_DEVICES", "200"))
    seconds = float(os.environ.get("BENCH_IDLE_SECONDS", "600"))
    settle = float(os.environ.get("BENCH_IDLE_SETTLE_SECONDS", "30"))
    with tempfile.TemporaryDirectory() as tmp_name:
        per_device, alone, hosted = measure(devices, seconds, settle, Path(tmp_name))
    return [
        Record(
            "sim_idle_cpu_s_per_device_hour",
            per_device,
            "CPU s/h",
            "one idle `edgemart agent run` process (agent_idle_cpu_s_per_hour), same run",
            alone,
            f"user + system CPU of one process hosting {hosted} idle simulated devices (real"
            f" agents of the world's households, a shared store pool, consents given), over"
            f" {seconds / 60:g} min after {settle:g} s to settle, per device; goal <= 1.0",
        )
    ]


if __name__ == "__main__":
    for record in run():
        print(record.to_json())
