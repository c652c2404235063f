"""A small scenario run end to end over worker processes and the gateway process: the file's
mix, pace, timed fault and campaign are what the fleet does, the report carries the
timeline, latencies and cost, and its shards merge to the unsharded run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from simulators import scenario
from simulators.fleet import run_fleet, succeeded
from simulators.fleet_merge import merge
from simulators.options import FleetOptions
from simulators.pace import Pace, household_devices, personas, world_size
from simulators.report_html import render
from simulators.world import make_world
from tests.support.processes import EDGEMART

pytestmark = pytest.mark.integration

SCENARIO = """
seed = 5
households = 2
drain_timeout_s = 60
[usage]
pace = "world"
compress = 40000
rounds = 4
duration_s = 4
[mix]
profiles = ["tv", "speaker"]
world_households = 50
[mix.consent]
marketing = 0.5
[[campaigns]]
at_s = 0.5
count = 1
[[campaigns]]
at_s = 1.8
count = 1
[[faults]]
fault = "gateway-restart"
at_s = 1.5
for_s = 1.0
"""


def _expected(options: FleetOptions, households: list[int]) -> int:
    """The signals the run's seeded draws give `households` (ordinals): the draws replayed
    for the whole fleet in household order, as every run (and shard) draws them."""
    world = make_world(options.seed, households=world_size(options))
    chosen = personas(options)[: options.households]
    specs = [household_devices(options, world.persona(i)) for i in chosen]
    pace = Pace(options, world)
    total = 0
    for r in range(options.rounds):
        for n, (i, hh) in enumerate(zip(chosen, specs, strict=True)):
            counts = pace.counts(r, {s.device_id: (world.persona(i), s.profile) for s in hh})
            total += sum(counts.values()) if n in households else 0
    return total


async def test_a_scenario_run_honours_its_mix_pace_fault_and_campaign(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    options = scenario.options(path, data_dir=tmp_path / "run", procs=2)
    report = await run_fleet(options)
    assert succeeded(report), report
    assert report["procs"] == 2  # one household on each worker process

    world = make_world(options.seed, households=world_size(options))
    chosen = personas(options)[:2]  # two of the world's 50, from the seed
    specs = [household_devices(options, world.persona(i)) for i in chosen]
    ids = sorted(s.device_id for hh in specs for s in hh)
    assert ids == sorted(f"hh{i:06d}-{p}" for i in chosen for p in ("tv", "speaker"))
    assert chosen != [0, 1]
    assert sorted(p.name for p in (tmp_path / "run" / "devices").iterdir()) == ids
    assert report["devices"] == 4

    expected = _expected(options, [0, 1])  # the same seed: the same draws, in the run's order
    assert expected > 0
    assert report["signals_accepted"] == expected
    assert report["pace"] == "world"
    assert report["compress"] == 40000

    begins, ends = (e["at_s"] for e in report["faults"])
    assert [e["fault"] for e in report["faults"]] == ["gateway-restart"] * 2
    assert ends - begins >= 1.0  # its end is noted once the new gateway process is ready
    # the second launch falls in the gateway's restart: the operator tries again until it is up
    assert [c["names"] for c in report["campaigns"]] == [
        ["Sample campaign sim-appliances"],
        ["Sample campaign sim-games"],
    ]
    assert report["campaigns"][1]["at_s"] > begins
    launched = report["launch_to_offer_ms"]["n"] + report["launch_to_offer_pending"]
    assert launched == 2 * 4
    assert report["decision_ms"]["n"] == report["launch_to_offer_ms"]["n"]

    samples = report["timeline"]["samples"]
    assert samples[-1]["signals_accepted"] == expected
    assert samples[-1]["faults_begun"] == 1
    assert max(s.get("devices_up", 0) for s in samples) == 4
    # the gateway is its own process: its pid on the timeline, a new one after the restart
    pids = [s["gateway_pid"] for s in samples if "gateway_pid" in s]
    assert len(set(pids)) == 2, pids
    assert (tmp_path / "run" / "gateway.log").read_text().count("gateway ready on") == 2
    cost = report["cost"]
    assert cost["gateway_in_process"] is False
    assert cost["gateway_cpu_s"] > 0
    assert cost["agents_cpu_s"] > 0  # the worker processes' own CPU, read before they ended
    assert cost["agent_cpu_s_per_device_hour"] > 0
    assert cost["gateway_db_bytes"] > 0
    assert report["ack_latency_ms"]["n"] > 0
    assert "<svg" in render(report)


async def test_a_sharded_scenario_run_merges_equal_to_the_unsharded(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    three = SCENARIO.replace("households = 2", "households = 3").split("[[faults]]")[0]
    path.write_text(three, encoding="utf-8")
    runs = []
    for shard in (None, (1, 2), (2, 2)):
        options = scenario.options(
            path, data_dir=tmp_path / f"run-{shard and shard[0]}", procs=2, shard=shard
        )
        report = await run_fleet(options)
        assert succeeded(report), report
        runs.append(report)
    whole, shards = runs[0], runs[1:]
    assert [s["devices"] for s in shards] == [4, 2]  # households 0 and 2, then 1
    assert whole["signals_accepted"] == _expected(options, [0, 1, 2])
    assert [s["signals_accepted"] for s in shards] == [
        _expected(options, [0, 2]),
        _expected(options, [1]),
    ]
    merged = merge(shards)
    for key in ("devices", "households", "device_digest", "signals_accepted"):
        assert merged[key] == whole[key], key
    assert merged["signals_lost"] == whole["signals_lost"] == 0


def test_the_cli_runs_a_scenario_with_a_flag_over_it_and_writes_the_html(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    report_path, page = tmp_path / "fleet.json", tmp_path / "fleet.html"
    args = [
        *EDGEMART,
        *("fleet", "--scenario", str(path), "--households", "1", "--compress", "20000"),
        *("--report", str(report_path), "--html", str(page)),
        *("--data-dir", str(tmp_path / "data")),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["devices"] == 2  # --households 1 over the file's 2, the file's mix of 2
    assert report["compress"] == 20000
    assert report["faults"][0]["fault"] == "gateway-restart"  # the file's, at its time
    assert "<svg" in page.read_text()
    assert "live" not in done.stderr.lower()  # stdout is not a terminal: no live display

    path.write_text(SCENARIO.replace("count = 1", "count = 1\nwhen = 3"), encoding="utf-8")
    bad = subprocess.run(
        [*EDGEMART, "fleet", "--scenario", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert f"{path}: campaigns.0.when: Extra inputs are not permitted" in bad.stderr
