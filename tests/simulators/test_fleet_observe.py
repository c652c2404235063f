"""The pieces around a fleet run that need no broker: the pace, the mix, the timeline's
bound and its counters across a gateway restart, and the HTML report from a recorded run."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np

from simulators.fleet_observe import Observation
from simulators.launches import Launches, surfaces
from simulators.options import FleetOptions
from simulators.pace import Pace, household_devices, personas, world_size
from simulators.report_html import render
from simulators.timeline import Sampler, Timeline, _Cumulative
from simulators.world import daily_signal_rate, make_world

FIXTURE = Path(__file__).parent / "fixtures" / "fleet-report.json"


def test_the_world_pace_sends_each_devices_own_daily_rate_compressed() -> None:
    options = FleetOptions(pace="world", compress=1440, rounds=24, duration_s=60.0, seed=3)
    world = make_world(3, households=8)
    personas = {f"d{i}": (world.persona(i), "tv") for i in range(8)}
    pace = Pace(options, world)
    sent = {d: 0 for d in personas}
    for _day in range(20):  # 20 simulated days
        for round_ in range(options.rounds):
            for device, n in pace.counts(round_, personas).items():
                sent[device] += n
    for device, (persona, profile) in personas.items():
        expected = 20 * daily_signal_rate(persona, profile)
        assert abs(sent[device] - expected) < 4 * np.sqrt(expected) + 3, (device, sent, expected)
    assert pace.describe() == {"pace": "world", "compress": 1440, "simulated_days": 1.0}
    one, two = Pace(options, world), Pace(options, world)
    assert [one.counts(r, personas) for r in range(24)] == [
        two.counts(r, personas) for r in range(24)
    ]  # seeded: the same run twice


def test_the_stress_pace_sends_the_same_count_everywhere() -> None:
    options = FleetOptions(signals_per_round=7)
    world = make_world(1, households=8)
    counts = Pace(options, world).counts(0, {"a": (world.persona(0), "tv")})
    assert counts == {"a": 7}


def test_the_mix_sets_profiles_and_consent_shares_from_the_seed() -> None:
    world = make_world(1, households=200)
    default = household_devices(FleetOptions(), world.persona(0))
    assert [d.profile for d in default] == ["hub", "tv", "phone", "phone"]
    options = FleetOptions(
        profiles=("tv", "speaker", "speaker"), consent_shares=(("marketing", 0.25),)
    )
    specs = [d for i in range(200) for d in household_devices(options, world.persona(i))]
    assert [d.device_id for d in specs[:3]] == [
        "hh000000-tv",
        "hh000000-speaker-1",
        "hh000000-speaker-2",
    ]
    assert [d.via_http for d in specs[:3]] == [True, False, False]
    marketing = sum(d.consent["marketing"] for d in specs) / len(specs)
    assert 0.2 < marketing < 0.3
    assert all(d.consent["analytics"] for d in specs)  # a purpose left out: all grant it
    assert specs == [d for i in range(200) for d in household_devices(options, world.persona(i))]


def test_the_timeline_stays_bounded_and_keeps_its_whole_span() -> None:
    timeline = Timeline(max_samples=100)
    for t in range(10_000):
        timeline.add({"t_s": float(t)})
    assert len(timeline.samples) <= 100
    assert timeline.samples[0]["t_s"] == 0.0
    assert timeline.samples[-1]["t_s"] > 9_800
    assert timeline.interval_s == 2.0**timeline.thinned


def test_gateway_counters_stay_cumulative_across_a_restart() -> None:
    counters = _Cumulative()
    assert counters.update({"signals_stored": 40})["signals_stored"] == 40
    assert counters.update({"signals_stored": 55})["signals_stored"] == 55
    assert counters.update({"signals_stored": 3})["signals_stored"] == 58  # a new gateway
    assert counters.update({"signals_stored": "x"}) == {}


async def test_the_sampler_samples_its_probes_and_is_bounded() -> None:
    calls = 0
    enough = asyncio.Event()

    async def devices() -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls >= 20:
            enough.set()
        return {"devices_up": 4, "signals_accepted": calls}

    events = [{"fault": "partition", "event": "begins", "at_s": 0.0}]
    sampler = Sampler(
        started=time.monotonic(),
        gateway=lambda: None,  # down: nothing from the gateway, no error
        devices=devices,
        faults=lambda: events,
        interval_s=0.01,
        max_samples=8,
    )
    async with sampler:
        await enough.wait()
    samples = sampler.timeline.samples
    assert len(samples) <= 8
    assert samples[-1]["signals_accepted"] == calls  # the last word after the block
    assert samples[-1]["faults_active"] == 1
    assert "signals_stored" not in samples[-1]


def test_the_html_report_renders_from_a_recorded_run(tmp_path: Path) -> None:
    report = json.loads(FIXTURE.read_text(encoding="utf-8"))
    page = render(report)
    assert page.startswith("<!doctype html>")
    assert page.count("<svg") == 2  # the timeline and the latencies
    assert "Edgemart fleet: OK" in page
    assert "world (compressed 20000.0x" in page
    assert "gateway-restart begins at" in page
    assert f"<th>accepted by the devices</th><td>{report['signals_accepted']}</td>" in page
    assert "launch → offer on the device (ms)" in page
    assert "gateway_cpu_us_per_device_day" in page
    assert render(report) == page  # the same report, the same page


def test_the_html_report_says_what_it_lacks() -> None:
    page = render({"signals_lost": 3, "drained": True, "faults": []})
    assert "Edgemart fleet: FAILED" in page
    assert "No timeline was recorded." in page
    assert "No latencies were measured" in page


def test_personas_are_the_worlds_first_or_drawn_from_a_larger_world() -> None:
    assert personas(FleetOptions(households=3)) == [0, 1, 2, 3]
    options = FleetOptions(households=3, world_households=1000, seed=8)
    drawn = personas(options)
    assert len(set(drawn)) == 4
    assert all(0 <= i < 1000 for i in drawn)
    assert drawn == personas(options)  # from the seed
    assert world_size(options) == 1000


def test_every_shard_draws_the_whole_fleets_counts() -> None:
    """At the world pace each shard draws for the whole fleet (then the crash TVs), so its
    devices' counts are the unsharded run's, whatever the shard."""

    def options(shard: tuple[int, int] | None) -> FleetOptions:
        return FleetOptions(
            households=5,
            pace="world",
            compress=20000.0,
            profiles=("tv", "speaker"),
            world_households=40,
            faults=("agent-kill",),
            shard=shard,
        )

    world = make_world(11, households=world_size(options(None)))
    runs = [Observation(options(shard), world) for shard in (None, (1, 2), (2, 2))]
    for round_ in range(4):
        drawn = [run.counts(round_) for run in runs]
        assert drawn[0] == drawn[1] == drawn[2]
        counts, _crash = drawn[0]
        assert counts is not None
        assert len(counts) == 10
    stress = Observation(FleetOptions(signals_per_round=7), world)
    assert stress.counts(0) == (None, 7)


def test_launch_latencies_come_from_what_the_workers_watches_saw() -> None:
    world = make_world(1, households=8)
    launches = Launches(
        [(0.0, 1), (5.0, 1)],
        world,
        surfaces(["tv"]),
        gateway=lambda: None,
        watch=_NoWatch(),
    )
    launches.launched = {0: 100.0, 1: 200.0}
    report = launches.report(
        {
            0: [
                {"offer_at": {"a": 100.5, "b": 101.0}, "pending": 0, "decision_ms": [1.0, 2.0]},
                {"offer_at": {"c": 102.0}, "pending": 1, "decision_ms": [3.0]},
            ],
            1: [{"offer_at": {"a": 200.25}, "pending": 0, "decision_ms": [4.0]}],
        }
    )
    assert report["launch_to_offer_ms"]["n"] == 4
    assert sorted(report["launch_to_offer_ms"]["values"]) == [250.0, 500.0, 1000.0, 2000.0]
    assert report["launch_to_offer_pending"] == 1
    assert report["decision_ms"]["n"] == 4
    assert report["offers_delivered_devices"] == 3
    assert report["launch_to_device_p99_ms"] == report["launch_to_offer_ms"]["p99"] == 2000.0
    assert report["launch_to_device_max_ms"] == 2000.0


class _NoWatch:
    async def begin(self, launch: int) -> None:
        raise AssertionError("no launch in this test")

    async def followed(self, launch: int) -> bool:
        raise AssertionError("no launch in this test")
