"""200 devices through every fault on a private Mosquitto, started at a ramp, in CI time:
0 lost, 0 duplicated, every device drained (before: 400 devices reported signals "lost" that
were still in outboxes, and resent every 10 s without backoff)."""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import EDGEMART

pytestmark = pytest.mark.integration


def test_200_devices_through_every_fault_lose_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "fleet.json"

    def common_soft_limit() -> None:  # the common 1,024: the fleet must raise it itself
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))

    args = [
        *EDGEMART,
        *("fleet", "--devices", "200", "--broker", "mosquitto", "--ramp", "100/s"),
        *("--faults", "gateway-restart,broker-restart,partition,agent-kill"),
        *("--report", str(report_path), "--data-dir", str(tmp_path / "data")),
    ]
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=common_soft_limit,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["devices"] == 202  # 50 households of 4 and 2 crash TVs
    assert report["signals_lost"] == report["signals_duplicated"] == 0
    assert report["signals_undelivered"] == 0 and report["drained"] is True
    assert report["signals_stored"] + report["signals_in_aggregates"] == report["signals_accepted"]
    assert report["start_s"] >= 49 * 4 / 100  # paced at 100 devices a second
    assert [e["fault"] for e in report["faults"]].count("broker-restart") == 2
