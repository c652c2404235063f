"""`agent_rss_mb`: an `edgemart agent run` process after N minutes at 100 signals/s over its
local API (acked by a gateway process through Mosquitto) vs the import floor: python with
the agent's imports and one model session. Also the growth over the run, and what handing
clean library pages back after start (`budgets.reclaim_clean_pages`) saves: a second agent
with it off, run for the first tenth of the time, against the first agent at that point.
These agents run from the venv: the gateway and this process map the same libraries, so
pages a device would hand back stay resident (see `agent_rss_page_out_mb`).

`_run(image=True)` starts the agent from a device image of its own instead
(`bench.device_image`: private copies of libpython and the extension modules it maps), the
RSS a device would see; `bench.thin_bench` measures both ways.

The duration is `BENCH_RSS_SECONDS` (default 600, the issue's ten minutes; not an `EDGEMART_*`
variable: the agent would read that as configuration).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

from bench.device_image import DeviceImage, device_image, probe_modules
from bench.processes import broker_and_gateway
from bench.record import Record
from firmware_profiles import profile_path
from simulators.brokers import free_port
from simulators.faults import AgentProcess

RATE = 100  # signals per second, in 10 requests of 10
DECIDE_EVERY_S = 1.0
"""With `household`: a decision (`GET /v1/offers`) this often, besides the signals."""

FLOOR = (
    "import agent.runtime.agent, agent.api.local, agent.link.uplink, agent.link.session\n"
    "import agent.store.core\n"
    "from agent.runtime.memory import page_out_clean_file_pages, rss_bytes\n"
    "from agent.model.scoring import load_default_model, warm\n"
    "model = load_default_model()\n"
    "floor = rss_bytes()\n"
    "page_out_clean_file_pages()\n"
    "warm(model)\n"
    "print(floor, rss_bytes())\n"
)
"""The floor, then the same process after the agent's start-up page-out and model warm-up."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _floor() -> tuple[float, float]:
    """(import floor, the floor after the page-out), MB, in a process of its own."""
    out = subprocess.run(
        [sys.executable, "-c", FLOOR], check=True, capture_output=True, text=True
    ).stdout
    floor, paged = (int(v) / (1024.0 * 1024.0) for v in out.split())
    return floor, paged


def first_surface(profile: str) -> str:
    """The surface a `household` run decides on: the shipped profile's first."""
    doc = tomllib.loads(profile_path(profile).read_text())
    return str(doc["surfaces"][0])


def _decide(api: str, token: str, surface: str) -> None:
    request = urllib.request.Request(
        f"{api}/v1/offers?surface={surface}&limit=3",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()


def _post(url: str, token: str, n: int, i: int) -> None:
    body = json.dumps(
        {
            "signals": [
                {"kind": "content_view", "attrs": {"category": "tv_streaming", "seconds": i % 600}}
            ]
            * n
        }
    ).encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()


def _run(
    seconds: float,
    tmp: Path,
    env: dict[str, str] | None = None,
    profile: str = "tv",
    *,
    image: bool = False,
    household: bool = False,
) -> tuple[float, float, float, int]:
    """(RSS at the end, RSS after the first tenth, max RSS, signals posted) of an
    `edgemart agent run --profile <profile>` process.

    `image`: the agent runs from a device image of its own (`bench.device_image`): private
    copies of libpython and the extension modules it maps, so no other process on this host
    shares their pages and its start-up page-out hands them back as on a device. Checked
    after start and at the end: an agent that maps a host copy fails the run.

    `household`: the agent runs as in a home (`bench.household_setup`): a member of a
    household coordinated by a hub agent process on the loopback LAN, with the sample
    campaigns on its surfaces, and asked for offers once a second (`DECIDE_EVERY_S`) besides
    the signals: a thin speaker's decisions go through the hub."""
    with contextlib.ExitStack() as stack:
        device = stack.enter_context(device_image(probe_modules(profile))) if image else None
        gateway_port = free_port()
        broker, trust = stack.enter_context(broker_and_gateway(tmp, http_port=gateway_port))
        agent_env = {"EDGEMART_CONSENT__ANALYTICS": "true", **(env or {})}
        surface = None
        if household:
            # here, not at the top: the household brings the simulators (numpy), and this
            # bench process must not map what the floor's and the agents' page-outs measure
            from bench import household_setup  # noqa: PLC0415

            surface = first_surface(profile)
            lan = household_setup.household(
                tmp,
                gateway_port=gateway_port,
                broker=broker,
                trust=trust,
                agent_dir=tmp / "agent",
                device_id=f"{profile}-rss-0001",
                profile=profile,
                surfaces=[surface],
            )
            agent_env = {
                **agent_env,
                **stack.enter_context(lan),
                "EDGEMART_CONSENT__PERSONALIZATION": "true",
                "EDGEMART_CONSENT__MARKETING": "true",
            }
        if device is not None:
            # AgentProcess lays env over os.environ: PYTHONPATH and LD_LIBRARY_PATH replaced
            agent_env = {**agent_env, **_image_paths(device)}
        agent = AgentProcess(
            profile=profile,
            device_id=f"{profile}-rss-0001",
            broker=broker,
            data_dir=tmp / "agent",
            api_port=free_port(),
            trust=trust,
            log=tmp / "agent.log",
            env=agent_env,
        )
        try:
            agent.start()
            assert agent.proc is not None
            pid = agent.proc.pid
            if device is not None:
                device.check(pid)
            end, early, peak, posted = _load(agent, pid, seconds, surface)
            if device is not None:
                device.check(pid)
            return end, early, peak, posted
        finally:
            agent.stop()


def _image_paths(device: DeviceImage) -> dict[str, str]:
    """The two variables of `device.env()` (ahead of this process's own values)."""
    full = device.env()
    return {key: full[key] for key in ("PYTHONPATH", "LD_LIBRARY_PATH")}


def _load(
    agent: AgentProcess, pid: int, seconds: float, surface: str | None = None
) -> tuple[float, float, float, int]:
    """`RATE` signals/s to the agent's API for `seconds`, and with `surface` a decision on it
    every `DECIDE_EVERY_S`: (RSS at the end, after the first tenth, max, signals posted)."""
    url = f"{agent.api}/v1/signals"
    token = agent.token()
    decided_at = 0.0
    start = time.monotonic()
    posted = 0
    early = peak = 0.0
    tick = 10.0 / RATE
    i = 0
    while (now := time.monotonic()) - start < seconds:
        _post(url, token, 10, i)
        posted += 10
        i += 1
        if surface is not None and now - decided_at >= DECIDE_EVERY_S:
            decided_at = now
            _decide(agent.api, token, surface)
        rss = rss_mb(pid)
        peak = max(peak, rss)
        if not early and now - start >= seconds / 10:
            early = rss
        time.sleep(max(0.0, start + i * tick - time.monotonic()))
    return rss_mb(pid), early or rss_mb(pid), peak, posted


def run() -> list[Record]:
    seconds = float(os.environ.get("BENCH_RSS_SECONDS", "600"))
    # A page this process maps too is not handed back (bench/cli.py runs this suite first).
    shared = [name for name in ("onnxruntime", "numpy") if name in sys.modules]
    caveat = f"; this bench process maps {' and '.join(shared)} too" if shared else ""
    floor, floor_paged = _floor()
    with tempfile.TemporaryDirectory() as tmp_name:
        end, early, peak, posted = _run(seconds, Path(tmp_name))
    # One at a time: a page another process maps cannot be paged out, so two agents side
    # by side would hold each other's library pages.
    with tempfile.TemporaryDirectory() as tmp_name:
        off, _, _, _ = _run(
            seconds / 10, Path(tmp_name), {"EDGEMART_BUDGETS__RECLAIM_CLEAN_PAGES": "false"}
        )
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
        Record(
            "agent_floor_page_out_mb",
            floor_paged,
            "MB",
            "import floor (agent imports + one model session)",
            floor,
            "the import floor's process after the page-out and model warm-up an agent does"
            f" after start: what a device whose libraries no other process maps keeps{caveat}",
        ),
        Record(
            "agent_rss_page_out_mb",
            early,
            "MB",
            "the same agent with budgets.reclaim_clean_pages = false",
            off,
            f"RSS after {seconds / 600:g} min at {RATE} signals/s, clean library pages handed"
            " back after start (MADV_PAGEOUT) vs kept; the gateway process here maps the same"
            " libraries (onnxruntime, numpy, pydantic...) and a page another process maps is"
            f" not handed back, so a device alone saves more (agent_floor_page_out_mb){caveat}",
        ),
    ]
