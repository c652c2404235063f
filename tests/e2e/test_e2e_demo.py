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
    assert isinstance(devices, list) and len(devices) == 5  # hub, TV, 2 phones, thin speaker
    for device in devices:
        assert device["offers_verified"] > 0, device
        assert device["decisions"] > 0, device
    assert succeeded(report)
    [speaker] = [d for d in devices if d["profile"] == "speaker"]
    assert speaker["ranking"] == "thin"
    assert speaker["remote_ranked"] > 0  # ranked by the hub, over the LAN
    assert report["household_lan"]["purifier_to_tv"]["uses_household_consumable_need"] is True
    _assert_the_social_evening(report)


def _assert_the_social_evening(report: dict[str, Any]) -> None:
    """Three households of friends form a group of 3 (each member's device shows it formed
    with its own coupon, the gateway counts it), and the wave's 2 coupons sell out to the
    flash crowd of six devices, every one of which holds the signed sold-out notice; between
    them, both friends help the TV's price cut down to its floor."""
    social = report["social"]
    assert len(social["friends"]) == 2 and all(f["tie"] > 0 for f in social["friends"])
    group = social["group"]
    assert group["formed"] is True and group["seats"] == group["size"] == 3
    assert group["coupons"] == 3
    assert len({m["coupon"] for m in group["members"]}) == 3  # one coupon each
    assert len({m["device_id"].split("-")[0] for m in group["members"]}) == 3  # 3 households
    [figures] = group["gateway"]
    assert (figures["formed"], figures["seats_granted"], figures["expired"]) == (1, 3, 0)
    cut = social["cut"]  # two helps: the published schedule's last lands on the floor
    assert cut["help_answers"] == ["open", "done"] and cut["helps"] == 2
    assert cut["price"] > cut["prices_seen"][0] > cut["price_reached"] == cut["floor"]
    assert cut["gateway"]["helps_refused"] == {}
    wave = social["wave"]
    assert wave["stock"] == wave["granted"] == 2
    assert wave["wanted"] == wave["devices"] == 6
    assert wave["granted"] + wave["refused_at_gateway"] + wave["held_at_edge"] == 6
    assert wave["sold_out_seen"] == 6
    assert (wave["gateway"]["taken"], wave["gateway"]["left"]) == (2, 0)
    assert wave["sold_out"] is True


def _assert_the_household_story(report: dict[str, Any]) -> None:
    """The purifier -> TV story of the default demo household (persona 5, whose purifier filter
    runs low) runs through the coordinator and the TV's model: the retrained default model
    (feature spec v2) reads `household.consumable_need`, and the purifier filter offer ranks on
    the TV with the reason `household_consumable_low`."""
    lan = report["household_lan"]
    assert lan["tv_consumable_need"]["purifier_filter"] > 0.8
    story = lan["purifier_to_tv"]
    assert story["feature_spec_version"] == 2
    assert story["uses_household_consumable_need"] is True
    shown = story["filter_offer_on_tv"]
    assert shown is not None, story["line"]
    assert "household_consumable_low" in shown["reasons"]
    assert story["ok"] is True


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
    _assert_the_household_story(report)
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
    assert "purifier -> TV:" in proc.stdout and "household_consumable_low" in proc.stdout
    assert "group buy:" in proc.stdout and "seats 3/3, formed, coupons 3" in proc.stdout
    assert "live wave: stock 2" in proc.stdout and "sold out" in proc.stdout
    assert "price cut: 2 friends helped, 129 -> 59" in proc.stdout


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
