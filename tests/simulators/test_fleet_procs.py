"""`edgemart fleet` over processes: the gateway as its own process, agents over worker
processes, and `--shard K/N` runs whose merged report equals the unsharded run's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from simulators.fleet import run_fleet, succeeded
from simulators.fleet_merge import merge
from simulators.options import FleetOptions
from tests.support.processes import EDGEMART

pytestmark = pytest.mark.integration


async def test_agents_run_over_worker_processes_and_the_gateway_restart_kills_a_process(
    tmp_path: Path,
) -> None:
    options = FleetOptions(
        households=4,
        rounds=3,
        signals_per_round=10,
        duration_s=2.0,
        procs=2,
        broker="mosquitto",
        faults=("gateway-restart", "partition"),
        data_dir=tmp_path,
    )
    report = await run_fleet(options)
    assert succeeded(report), report
    assert report["procs"] == 2
    assert report["devices"] == 16
    assert report["signals_accepted"] == 16 * 3 * 10
    assert report["signals_stored"] + report["signals_in_aggregates"] == 16 * 3 * 10
    # two workers, each with its own log, each hosting two households
    assert sorted(p.name for p in (tmp_path / "workers").glob("*.log")) == [
        "worker-0.log",
        "worker-1.log",
    ]
    # the campaign launched at the start reached every device (watched by its worker)
    assert report["offers_delivered_devices"] == 16
    assert report["launch_to_device_p99_ms"] > 0
    # the gateway is a real process: SIGKILLed and started again, it said ready twice
    assert (tmp_path / "gateway.log").read_text().count("gateway ready on") == 2


def test_two_shards_merged_equal_the_unsharded_run(tmp_path: Path) -> None:
    whole_path = tmp_path / "whole.json"
    parts = [tmp_path / "shard-1.json", tmp_path / "shard-2.json"]

    def fleet(report: Path, *extra: str) -> None:
        args = [
            *EDGEMART,
            *("fleet", "--households", "4", "--rounds", "3", "--duration", "2"),
            *("--signals-per-round", "10", "--seed", "5", "--report", str(report)),
            *("--data-dir", str(report.with_suffix("")), *extra),
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=240, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    fleet(whole_path)
    fleet(parts[0], "--shard", "1/2")
    fleet(parts[1], "--shard", "2/2")
    done = subprocess.run(
        [*EDGEMART, "fleet", "merge", *map(str, parts)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)
    whole = json.loads(whole_path.read_text())
    shards = [json.loads(p.read_text()) for p in parts]
    assert [s["devices"] for s in shards] == [8, 8]
    assert shards[0]["device_digest"] != shards[1]["device_digest"]
    for key in ("devices", "households", "device_digest", "signals_accepted"):
        assert merged[key] == whole[key], key
    assert (
        merged["signals_stored"] + merged["signals_in_aggregates"]
        == whole["signals_stored"] + whole["signals_in_aggregates"]
        == whole["signals_accepted"]
    )
    assert merged["signals_lost"] == whole["signals_lost"] == 0
    assert merged["signals_duplicated"] == whole["signals_duplicated"] == 0
    assert merge(shards) == merged
