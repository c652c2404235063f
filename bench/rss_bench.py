"""`agent_rss_mb`: an `edgemart agent run` process after N minutes at 100 signals/s over its
local API (acked by a gateway process through Mosquitto) vs the import floor: python with
the agent's imports and one model session. Also the growth over the run.

The duration is `BENCH_RSS_SECONDS` (default 600, the issue's ten minutes; not an `EDGEMART_*`
variable: the agent would read that as configuration).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.record import Record
from edgemart.broker import MosquittoProcess, free_port
from simulators.faults import AgentProcess

RATE = 100  # signals per second, in 10 requests of 10
FLOOR = (
    "import agent.daemon, agent.api, agent.uplink, agent.link, agent.store\n"
    "from agent.scoring import load_default_model\n"
    "model = load_default_model()\n"
    "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])\n"
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _floor() -> float:
    out = subprocess.run(
        [sys.executable, "-c", FLOOR], check=True, capture_output=True, text=True
    ).stdout
    return int(out.strip()) / 1024.0


def _post(url: str, n: int, i: int) -> None:
    body = json.dumps(
        {
            "signals": [
                {"kind": "content_view", "attrs": {"category": "tv_streaming", "seconds": i % 600}}
            ]
            * n
        }
    ).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()


def _run(seconds: float, tmp: Path) -> tuple[float, float, float, int]:
    """(RSS at the end, RSS after the first tenth, max RSS, signals posted)."""
    broker = MosquittoProcess(str(tmp / "mosquitto"))
    broker.start()
    gw_port = free_port()
    gw_log = (tmp / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgemart",
            "gateway",
            "run",
            "--broker",
            broker.url,
            "--data-dir",
            str(tmp / "gw"),
            "--http-port",
            str(gw_port),
        ],
        stdout=gw_log,
        stderr=subprocess.STDOUT,
    )
    agent = None
    try:
        deadline = time.monotonic() + 60
        while not (tmp / "gw" / "trust.json").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.1)
        agent = AgentProcess(
            profile="tv",
            device_id="tv-rss-0001",
            broker=broker.url,
            data_dir=tmp / "agent",
            api_port=free_port(),
            trust=tmp / "gw" / "trust.json",
            log=tmp / "agent.log",
            env={"EDGEMART_CONSENT__ANALYTICS": "true"},
        )
        agent.start()
        assert agent.proc is not None
        pid = agent.proc.pid
        url = f"{agent.api}/v1/signals"
        start = time.monotonic()
        posted = 0
        early = peak = 0.0
        tick = 10.0 / RATE
        i = 0
        while (now := time.monotonic()) - start < seconds:
            _post(url, 10, i)
            posted += 10
            i += 1
            rss = rss_mb(pid)
            peak = max(peak, rss)
            if not early and now - start >= seconds / 10:
                early = rss
            time.sleep(max(0.0, start + i * tick - time.monotonic()))
        return rss_mb(pid), early or rss_mb(pid), peak, posted
    finally:
        if agent is not None:
            agent.stop()
        gateway.terminate()
        gateway.wait(30)
        gw_log.close()
        broker.stop()


def run() -> list[Record]:
    seconds = float(os.environ.get("BENCH_RSS_SECONDS", "600"))
    floor = _floor()
    with tempfile.TemporaryDirectory() as tmp_name:
        end, early, peak, posted = _run(seconds, Path(tmp_name))
    growth = 100.0 * (end - early) / early
    minutes = f"{seconds / 60:g} min"
    return [
        Record(
            "agent_rss_mb",
            end,
            "MB",
            "import floor (agent imports + one model session)",
            floor,
            f"RSS of `edgemart agent run --profile tv` after {minutes} at {RATE} signals/s"
            f" ({posted} posted, acked via Mosquitto + gateway); peak {peak:.1f} MB",
        ),
        Record(
            "agent_rss_growth_pct",
            growth,
            "%",
            "limit 5 %",
            5.0,
            f"RSS growth from the first tenth of the run ({early:.1f} MB) to its end"
            f" ({end:.1f} MB), {minutes}",
        ),
    ]
