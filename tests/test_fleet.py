"""`edgemart fleet`: many households of real agents against one gateway, faults injected in
the middle of the run, and every accepted signal accounted for."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgemart.broker import MosquittoProcess
from simulators.fleet import FleetOptions, run_fleet, succeeded
from tests.helpers import EDGEMART

pytestmark = pytest.mark.integration


async def test_a_fleet_through_a_broker_restart_a_gateway_restart_and_a_partition(
    tmp_path: Path,
) -> None:
    options = FleetOptions(
        households=1,
        rounds=9,
        signals_per_round=10,
        duration_s=6.0,
        faults=("partition", "gateway-restart", "broker-restart"),
        data_dir=tmp_path,
        drain_timeout=60.0,
    )
    report = await run_fleet(options)
    assert succeeded(report), report
    assert report["signals_accepted"] == 4 * 9 * 10
    assert report["signals_stored"] + report["signals_in_aggregates"] == 4 * 9 * 10
    assert report["signals_lost"] == report["signals_duplicated"] == 0
    # every device lost its session when the embedded broker went down, and came back
    assert report["device_reconnects"] >= 4
    events = [(e["fault"], e["event"]) for e in report["faults"]]
    assert events == [
        ("gateway-restart", "begins"),
        ("broker-restart", "begins"),
        ("partition", "begins"),
        ("partition", "ends"),
        ("broker-restart", "ends"),
        ("gateway-restart", "ends"),
    ]
    # what devices sent while the gateway was down, the broker lost with its restart: only
    # the end-to-end ack brought it in, by sending those batches again
    assert report["batches_resent"] > 0


def test_fleet_options_refuse_what_cannot_be_run() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FleetOptions(faults=("flood",))
    with pytest.raises(ValueError, match="embedded broker"):
        FleetOptions(broker="mqtt://127.0.0.1:1883", faults=("broker-restart",))


def test_the_cli_against_mosquitto_writes_the_report_and_says_ok(
    own_mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    report_path = tmp_path / "fleet.json"
    args = [
        *EDGEMART,
        *("fleet", "--households", "1", "--rounds", "3", "--duration", "3"),
        *("--faults", "partition,gateway-restart", "--broker", own_mosquitto.url),
        *("--report", str(report_path), "--data-dir", str(tmp_path / "data")),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "OK" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["signals_lost"] == 0
    assert report["signals_accepted"] == 4 * 3 * 20
    bad = subprocess.run(
        [*EDGEMART, "fleet", "--faults", "flood"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "unknown fault(s) ['flood']" in bad.stderr
