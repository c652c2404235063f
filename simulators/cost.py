"""What a fleet run costs per device: the agents' CPU per device-hour, the gateway's CPU-µs
and database bytes per device-day at the run's cadence (`docs/scale.md` extrapolates them).

The gateway runs as its own process and the agents in worker processes: each one's CPU is
read from /proc (`process_cpu_s`, as `bench.capacity_bench` measures a gateway worker), a
gateway killed by `gateway-restart` just before the kill, the workers before they stop. The
fleet process's own CPU (rounds, sampling, launches) is reported apart (`fleet_cpu_s`);
`gateway_in_process` stays in the report, always false.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICK_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK_S  # utime, stime


def own_cpu_s() -> float:
    """This process's CPU seconds (the fleet process: rounds, sampling, launches)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def db_bytes(path: Path) -> int:
    """Bytes a SQLite database's live pages take ((pages - free pages) x page size, WAL
    included: what a checkpoint does not change); 0 when absent. Blocking."""
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


@dataclass(slots=True)
class CostMeter:
    """Readings at the start of the usage rounds (`start`) and once the devices drained
    (`finish`, while the workers still run); `report` divides them by the devices and the
    time."""

    gateway_cpu: Callable[[], float]
    """CPU seconds of the gateway's processes so far (a killed one's read before the kill)."""
    agents_cpu: Callable[[], float]
    """CPU seconds of the agent worker processes so far (/proc of each worker)."""
    gateway_db: Path | None
    """The gateway's SQLite file; None on PostgreSQL (not measured here)."""
    began: float = 0.0
    cpu: tuple[float, float] = (0.0, 0.0)
    agent_cpu: tuple[float, float] = (0.0, 0.0)
    gateway: tuple[float, float] = (0.0, 0.0)
    db: tuple[int, int] = (0, 0)
    wall_s: float = 0.0

    async def _db(self) -> int:
        return 0 if self.gateway_db is None else await asyncio.to_thread(db_bytes, self.gateway_db)

    async def start(self) -> None:
        self.began = time.monotonic()
        self.cpu = (own_cpu_s(), 0.0)
        self.agent_cpu = (self.agents_cpu(), 0.0)
        self.gateway = (self.gateway_cpu(), 0.0)
        self.db = (await self._db(), 0)

    async def finish(self) -> None:
        self.wall_s = time.monotonic() - self.began
        self.cpu = (self.cpu[0], own_cpu_s())
        self.agent_cpu = (self.agent_cpu[0], self.agents_cpu())
        self.gateway = (self.gateway[0], self.gateway_cpu())
        self.db = (self.db[0], await self._db())

    def report(self, *, devices: int, agents: int, simulated_days: float) -> dict[str, Any]:
        """Per device: agent CPU-s per device-hour of wall time (the worker processes' CPU
        over the `agents` they host), gateway CPU-µs and DB bytes per device-day of
        simulated time (real time at the stress pace) over all `devices`."""
        agent_cpu = self.agent_cpu[1] - self.agent_cpu[0]
        gateway_cpu = self.gateway[1] - self.gateway[0]
        device_days = max(devices * simulated_days, 1e-9)
        agent_hours = max(agents * self.wall_s / 3600, 1e-9)
        out: dict[str, Any] = {
            "gateway_in_process": False,
            "wall_s": round(self.wall_s, 2),
            "fleet_cpu_s": round(self.cpu[1] - self.cpu[0], 3),
            "agents_cpu_s": round(agent_cpu, 3),
            "gateway_cpu_s": round(gateway_cpu, 3),
            "agent_cpu_s_per_device_hour": round(agent_cpu / agent_hours, 3),
            "gateway_cpu_us_per_device_day": round(gateway_cpu * 1e6 / device_days, 1),
            "device_days": round(device_days, 4),
        }
        if self.gateway_db is not None:
            grown = self.db[1] - self.db[0]
            out["gateway_db_bytes"] = grown
            out["gateway_db_bytes_per_device_day"] = round(grown / device_days, 1)
        return out
