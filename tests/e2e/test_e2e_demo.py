"""The demo as the README runs it (embedded amqtt, CLI, JSON report), and on Mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulators.brokers import MosquittoProcess
from simulators.demo import DemoOptions, run_demo, succeeded

pytestmark = pytest.mark.integration


def _assert_whole_loop(report: dict[str, Any]) -> None:
    assert report["signals_lost"] == 0, report.get("lost_ids_sample")
    assert report["signals_duplicated"] == 0
    # stored raw, as the fleet report counts them; what aggregates cover is its own field
    assert report["signals_stored"] + report["signals_in_aggregates"] == report["signals_accepted"]
    assert isinstance(report["signals_accepted"], int) and report["signals_accepted"] > 0
    assert isinstance(report["offers_pushed"], int) and report["offers_pushed"] > 0
    assert isinstance(report["forged_offers_sent"], int) and report["forged_offers_sent"] > 0
    # refused: exactly the forged and the tampered bundle, and every offer in them
    assert report["forged_bundles_sent"] == report["tampered_bundles_sent"] == 1
    assert report["bundles_rejected"] == 2
    assert report["offers_rejected"] == (
        report["forged_offers_sent"] + report["tampered_offers_sent"]
    )
    assert report["outcomes_stored"] == report["outcomes_recorded"]
    devices = report["devices"]
    assert isinstance(devices, list) and len(devices) == 4
    for device in devices:
        assert device["offers_verified"] > 0, device
        assert device["decisions"] > 0, device
    assert succeeded(report)


def test_demo_command_on_the_embedded_broker(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgemart", "demo", "--report", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    _assert_whole_loop(report)
    assert report["duration_s"] < 60
    for key in (
        "signals_accepted",
        "signals_stored",
        "signals_lost",
        "offers_pushed",
        "offers_verified",
        "offers_rejected",
        "decisions",
        "decision_p50_ms",
        "decision_p99_ms",
        "outcomes_stored",
    ):
        assert key in report
    assert "signals_lost" in proc.stdout


async def test_demo_on_mosquitto(tmp_path: Path, mosquitto: MosquittoProcess) -> None:
    report = await run_demo(
        DemoOptions(
            broker=mosquitto.url,
            data_dir=tmp_path,
            seed=11,
            signals_per_device=200,
            browse_rounds=20,
        )
    )
    _assert_whole_loop(report)
