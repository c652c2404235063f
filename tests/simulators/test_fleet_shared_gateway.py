"""Many machines, one gateway: `edgemart fleet --shard K/N --gateway URL` runs against a
gateway and broker that already run, and the merged report of the shards equals the
unsharded run's (that one with a gateway of its own). Shard 2 runs as the
command line of docs/fleet.md, shard 1 in the test process, at the same time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulators.brokers import MosquittoProcess, free_port
from simulators.fleet import run_fleet, succeeded
from simulators.fleet_merge import merge
from simulators.fleet_procs import GatewayProcess
from simulators.options import FleetOptions, fresh_root
from tests.support.processes import EDGEMART

pytestmark = pytest.mark.integration

SAME: dict[str, Any] = {
    "households": 3,
    "rounds": 3,
    "signals_per_round": 10,
    "duration_s": 2.0,
    "seed": 5,
    "procs": 1,
}


async def test_two_shards_against_one_gateway_merge_to_the_unsharded_run(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    root = fresh_root("shared")
    (tmp_path / "gateway").mkdir()
    gateway = GatewayProcess(
        broker=mosquitto.url,
        data_dir=tmp_path / "gateway",
        http_port=free_port(),
        topic_root=root,
        log=tmp_path / "gateway.log",
    )
    await asyncio.to_thread(gateway.start)
    try:
        token_file = tmp_path / "token"
        token_file.write_text(await asyncio.to_thread(gateway.token) + "\n")
        one = FleetOptions(
            **SAME,
            shard=(1, 2),
            broker=mosquitto.url,
            gateway=gateway.api,
            gateway_token_file=token_file,
            trust=gateway.trust_path,
            topic_root=root,
            data_dir=tmp_path / "shard-1",
            faults=("partition",),  # its own devices' link to the shared broker goes dark
        )
        two = tmp_path / "shard-2.json"
        cli = [  # shard 2 as another machine runs it: the command of docs/fleet.md
            *("fleet", "--shard", "2/2", "--households", "3", "--rounds", "3"),
            *("--signals-per-round", "10", "--duration", "2", "--seed", "5", "--procs", "1"),
            *("--gateway", gateway.api, "--gateway-token-file", str(token_file)),
            *("--trust", str(gateway.trust_path), "--broker", mosquitto.url),
            *("--topic-root", root, "--report", str(two), "--data-dir", str(tmp_path / "s2")),
        ]
        proc = await asyncio.create_subprocess_exec(
            *EDGEMART, *cli, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        first, (said, _) = await asyncio.gather(run_fleet(one), proc.communicate())
        assert proc.returncode == 0, said.decode()[-3000:]
        parts = [first, json.loads(two.read_text())]
        async with aiohttp.ClientSession() as http:
            stats = await gateway.stats(http)
    finally:
        async with aiohttp.ClientSession() as http:
            await gateway.stop(http)
    whole = await run_fleet(FleetOptions(**SAME, broker=mosquitto.url, data_dir=tmp_path / "w"))
    assert succeeded(whole), whole
    assert [p["devices"] for p in parts] == [8, 4]
    assert all(p["gateway"] == gateway.api and succeeded(p) for p in parts), parts
    assert "gateway_duplicates_ignored" not in parts[0]  # the gateway's: the whole fleet's
    # the campaigns were launched once for the fleet, by shard 1
    assert [e["event"] for e in parts[0]["campaigns"]] == ["launched"]
    assert parts[1]["campaigns"] == []
    assert [(f["fault"], f["event"]) for f in parts[0]["faults"]] == [
        ("partition", "begins"),
        ("partition", "ends"),
    ]
    merged = merge(list(parts))
    assert succeeded(merged), merged
    assert merged["gateway"] == [gateway.api]
    assert merged["topic_root"] == [root]
    for key in ("devices", "device_digest", "signals_accepted", "signals_undelivered"):
        assert merged[key] == whole[key], key
    assert merged["signals_accepted"] == 12 * 3 * 10
    kept = merged["signals_stored"] + merged["signals_in_aggregates"]
    assert kept == whole["signals_stored"] + whole["signals_in_aggregates"] == 12 * 3 * 10
    assert (merged["signals_lost"], merged["signals_duplicated"]) == (0, 0)
    # one gateway stored every shard's signals (and was never restarted)
    assert gateway.log.read_text().count("gateway ready on") == 1
    assert stats, "the shared gateway answered GET /v1/stats"
