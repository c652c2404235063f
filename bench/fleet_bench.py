"""`fleet_devices_per_machine`: the largest `edgemart fleet --devices N` that completes the
standard scenario (every fault, a private Mosquitto, `--ramp 200/s`) with 0 lost in under 10
minutes here, `fleet_host_cpu_ms_per_device_hour` at that size (the CPU of the fleet process
and its children: the gateway process, the agent worker processes, Mosquitto, the crash TVs,
per device and hour of the run), and `fleet_launch_to_device_p99_ms` at that size (the
campaign the run launches: from the launch call to each device having verified its offers).

Sizes tried in order from `BENCH_FLEET_SIZES` (default `1000,2000,3500,5000`), stopping at
the first that fails or passes the limit. The machine's load average at each start is in
the notes (other work on a shared machine slows the fleet). Baseline: the issue's
measurement before the agent slept, shared its store threads and backed off its resends:
100 devices was the largest size that completed with 0 lost (400 reported signals lost,
1,000 did not finish in 8 minutes). Minutes of work: not run by default in CI.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.record import Record

LIMIT_S = 600.0
FAULTS = "gateway-restart,broker-restart,partition,agent-kill"
BEFORE_DEVICES = 100.0
"""Issue 16's figure for the code before it: 100 devices clean, 400 'lost' signals."""


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(devices: int, tmp: Path) -> tuple[bool, float, float, dict[str, object]]:
    """(0 lost and drained within the limit, wall seconds, CPU seconds, the report)."""
    report_path = tmp / f"fleet-{devices}.json"
    cpu_before = _children_cpu_s()
    started = time.monotonic()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgemart",
                "fleet",
                *("--devices", str(devices), "--broker", "mosquitto", "--ramp", "200/s"),
                *("--faults", FAULTS, "--report", str(report_path)),
                *("--data-dir", str(tmp / f"data-{devices}")),
            ],
            capture_output=True,
            timeout=LIMIT_S,
            check=False,
        )
        ok = done.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    wall = time.monotonic() - started
    cpu = _children_cpu_s() - cpu_before
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return ok and wall < LIMIT_S, wall, cpu, report


def _cost(devices: int, wall: float, cpu: float, report: dict[str, object]) -> float:
    """CPU ms per device-hour of one run."""
    real = int(str(report.get("devices", devices)))
    return cpu * 1000.0 / (real * wall / 3600.0)


def run() -> list[Record]:
    sizes = [int(n) for n in os.environ.get("BENCH_FLEET_SIZES", "1000,2000,3500,5000").split(",")]
    best: tuple[int, float, float, dict[str, object]] | None = None
    first_cost: float | None = None
    loads: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        for devices in sizes:
            loads.append(f"{devices}: load {os.getloadavg()[0]:.1f}")
            ok, wall, cpu, report = run_one(devices, Path(tmp_name))
            verdict = "ok" if ok else "failed"
            sys.stderr.write(
                f"fleet_bench: {devices} devices: {verdict}, {wall:.0f} s,"
                f" lost {report.get('signals_lost')}, undelivered"
                f" {report.get('signals_undelivered')}, {loads[-1]}\n"
            )
            if not ok:
                break
            best = (devices, wall, cpu, report)
            if first_cost is None:
                first_cost = _cost(devices, wall, cpu, report)
    if best is None or first_cost is None:
        return []
    devices, wall, cpu, report = best
    real = int(str(report.get("devices", devices)))
    per_device_hour = _cost(devices, wall, cpu, report)
    return [
        Record(
            "fleet_devices_per_machine",
            float(devices),
            "devices",
            "before issue 16: the largest size with 0 lost",
            BEFORE_DEVICES,
            f"largest of {sizes} completing every fault on a private Mosquitto with 0 lost in"
            f" under {LIMIT_S:.0f} s: {wall:.0f} s, start {report.get('start_s')} s,"
            f" {report.get('procs')} worker processes; machine load at each start:"
            f" {', '.join(loads)}",
        ),
        Record(
            "fleet_host_cpu_ms_per_device_hour",
            per_device_hour,
            "CPU ms per device-hour",
            f"the same at the first size tried ({sizes[0]} devices): flat when the ratio is ~1",
            first_cost,
            f"{cpu:.0f} CPU s (fleet, gateway and agent worker processes, Mosquitto, crash TVs)"
            f" over {wall:.0f} s for {real} devices, stress pace (20 signals per device per"
            " round, 9 rounds in 12 s) and every fault",
        ),
        Record(
            "fleet_launch_to_device_p99_ms",
            float(str(report.get("launch_to_device_p99_ms") or 0.0)),
            "ms",
            "the median (p50) of the same run",
            float(str(report.get("launch_to_device_p50_ms") or 0.0)),
            f"campaign launched as the rounds begin, {report.get('offers_delivered_devices')}"
            f" of {real} devices verified its offers; max"
            f" {report.get('launch_to_device_max_ms')} ms (the gateway's fan-out, the broker,"
            " each device's bundle verification under the usage load)",
        ),
    ]


if __name__ == "__main__":
    for record in run():
        print(record.to_json())
