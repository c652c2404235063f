"""`agent_idle_cpu_s_per_hour`: the CPU an idle `edgemart agent run` burns (connected to a
private Mosquitto and a gateway process, analytics on, nothing to send), per hour.

Baseline, side by side in the same run: the same agent with `uplink.idle_wake_s = 0.25`,
which wakes the uplink four times a second with a full look at the outbox each time (what
the uplink's fixed 4 Hz tick did before it slept until its next due time). Today's code
cannot run the old code, and a bare sleeping python process would only say what the kernel
costs; this baseline shows what the timer work saves on the machine of the run. Both agents
run at once, so the machine's load falls on both alike.

CPU is user + system time from `/proc/PID/stat` (every thread, exited ones included; 10 ms
ticks: a short run's figure is coarse), counted after the agents settled (start-up, the
first maintenance round, the model warm-up) for `BENCH_IDLE_SECONDS` (default 600, the
issue's ten minutes; `BENCH_IDLE_SETTLE_SECONDS`, default 30). Not `EDGEMART_*` variables:
the agent would read those as configuration.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.processes import broker_and_gateway
from bench.record import Record
from simulators.brokers import free_port
from simulators.faults import AgentProcess

OLD_TICK_S = 0.25


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def measure(seconds: float, settle: float, tmp: Path) -> tuple[float, float]:
    """CPU seconds per hour of (the agent as shipped, the agent waking at 4 Hz)."""
    with broker_and_gateway(tmp) as (broker, trust):
        agents = [
            AgentProcess(
                profile="tv",
                device_id=f"tv-idle-{name}",
                broker=broker,
                data_dir=tmp / name,
                api_port=free_port(),
                trust=trust,
                log=tmp / f"{name}.log",
                env={"EDGEMART_CONSENT__ANALYTICS": "true", **extra},
            )
            for name, extra in (
                ("new", {}),
                ("old", {"EDGEMART_UPLINK__IDLE_WAKE_S": str(OLD_TICK_S)}),
            )
        ]
        try:
            for agent in agents:
                agent.start()
            time.sleep(settle)
            pids = [agent.proc.pid for agent in agents if agent.proc is not None]
            before = [cpu_seconds(pid) for pid in pids]
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            for agent in agents:
                if not agent.alive:
                    raise RuntimeError(f"agent {agent.device_id} died (log: {agent.log})")
        finally:
            for agent in agents:
                agent.stop()
    per_hour = [u * 3600.0 / elapsed for u in used]
    return per_hour[0], per_hour[1]


def run() -> list[Record]:
    seconds = float(os.environ.get("BENCH_IDLE_SECONDS", "600"))
    settle = float(os.environ.get("BENCH_IDLE_SETTLE_SECONDS", "30"))
    with tempfile.TemporaryDirectory() as tmp_name:
        new, old = measure(seconds, settle, Path(tmp_name))
    return [
        Record(
            "agent_idle_cpu_s_per_hour",
            new,
            "CPU s/h",
            f"the same agent waking its uplink every {OLD_TICK_S} s (the old fixed tick)",
            old,
            f"user + system CPU of an idle `edgemart agent run --profile tv` (connected to"
            f" Mosquitto and a gateway, analytics on, nothing to send) over {seconds / 60:g} min"
            f" after {settle:g} s to settle; goal <= 1.0",
        )
    ]


if __name__ == "__main__":
    for record in run():
        print(record.to_json())
