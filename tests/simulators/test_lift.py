"""The fleet lift run (issue 18): keyed luck, the world's conversion truth, the report's
arithmetic, and a whole run deterministic for a seed (in-process and through the CLI)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulators.lift import run_lift
from simulators.lift_report import ArmTally, outcomes, report, uniforms
from simulators.options import LiftOptions
from simulators.world import make_world


def _tally(n: int, offset: int = 0) -> ArmTally:
    tally = ArmTally()
    for i in range(n):
        tally.add((i % 5, i % 3, i + offset), i % 64, float(i % 24), i % 4)
    return tally


def test_luck_is_keyed_by_impression_and_draw_and_uniform() -> None:
    tally = _tally(20_000)
    a, b = uniforms(7, tally, 1), uniforms(7, tally, 1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, uniforms(7, tally, 2))
    assert not np.array_equal(a, uniforms(8, tally, 1))
    assert a.min() >= 0.0 and a.max() < 1.0
    assert abs(a.mean() - 0.5) < 0.01
    # the same impression recorded in another arm (another list) meets the same luck
    other = ArmTally()
    other.add((tally.household[9], tally.device[9], tally.session[9]), tally.offer[9], 3.0, 1)
    assert uniforms(7, other, 1)[0] == a[9]


def test_the_world_knows_what_follows_a_click_and_what_happens_anyway() -> None:
    world = make_world(3, 200)
    n = 4000
    rng = np.random.default_rng(0)
    household = rng.integers(0, 200, n)
    offer = rng.integers(0, len(world.catalog), n)
    hour = rng.uniform(0, 24, n)
    profile = rng.integers(0, 4, n)
    click, buy, organic = world.outcome_probabilities(household, offer, hour, profile)
    assert np.array_equal(click, world.click_probability(household, offer, hour, profile))
    assert ((buy > 0) & (buy < 1)).all()
    assert np.allclose(organic, 0.2 * click * buy)  # a shown offer brings 5x what happens anyway
    # a household whose purifier filter runs low buys the filter offer it clicked more often
    hh = world.households
    filter_offer = int(np.flatnonzero(world.catalog.category_idx == 0)[0])

    def buy_rate(rows: np.ndarray) -> float:
        n = len(rows)
        got = world.outcome_probabilities(
            rows, np.full(n, filter_offer), np.full(n, 12.0), np.zeros(n, dtype=np.int64)
        )
        return float(got[1].mean())

    low = np.flatnonzero(hh.owns[:, 0] & (hh.level[:, 0] < 0.2))
    full = np.flatnonzero(hh.owns[:, 0] & (hh.level[:, 0] > 0.8))
    assert len(low) and len(full)
    assert buy_rate(low) > buy_rate(full)


def test_the_report_counts_rates_ratios_and_the_goal() -> None:
    world = make_world(3, 5)
    shown, held = _tally(3000), _tally(300, offset=10_000)
    few = _tally(1000, offset=20_000)
    result = report(
        world,
        {"broadcast": (shown, held, 4000), "shipped": (few, ArmTally(), 4000)},
        seed=7,
        device_days=100,
        settings={},
    )
    base, model = result.arm("broadcast"), result.arm("shipped")
    _, converted, _ = outcomes(world, shown, 7)
    assert base.impressions == 3000 and base.conversions == int(converted.sum())
    assert base.conversions_per_1000 == pytest.approx(1000 * converted.mean())
    assert base.offers_per_device_day == 30.0
    assert base.uplift_low < base.uplift_per_1000 < base.uplift_high
    assert math.isnan(model.uplift_per_1000)  # nothing held out: no uplift claimed
    rate, ratio = result.ratios("shipped")
    assert ratio == pytest.approx(1000 / 3000)
    assert rate == pytest.approx(model.conversions_per_1000 / base.conversions_per_1000)
    assert "n/a (none held out)" in result.markdown()


@pytest.mark.parametrize(
    ("field", "value"),
    [("households", 0), ("min_score", 1.5), ("holdout", 1.0), ("sessions_per_day", 0.0)],
)
def test_lift_options_refuse_what_cannot_run(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        LiftOptions(**{field: value})  # type: ignore[arg-type]


@pytest.mark.integration
def test_a_lift_run_is_deterministic_for_a_seed_through_the_cli_too(tmp_path: Path) -> None:
    """The same seed twice (once in-process, once as `edgemart fleet lift` in a child
    process) gives the same figures; the min-score rule shows fewer offers than broadcast,
    and the retrained model was trained on the shipped arm's logs and served by the agent."""
    options = LiftOptions(seed=5, households=12, days=2, min_score=0.25, work_dir=tmp_path / "a")
    first = run_lift(options).to_json()
    report_file = tmp_path / "lift.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgemart",
            "fleet",
            "lift",
            "--seed=5",
            "--households=12",
            "--days=2",
            "--min-score=0.25",
            f"--report={report_file}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| (a) popularity broadcast" in done.stdout
    second = json.loads(report_file.read_text())
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    arms = {a["name"]: a for a in first["arms"]}
    assert arms["broadcast"]["impressions"] > 0
    assert arms["shipped"]["impressions"] < arms["broadcast"]["impressions"]
    assert first["settings"]["retrained_on"] > 0
    assert (tmp_path / "a" / "retrained" / "model.onnx").exists()
    other = run_lift(LiftOptions(seed=6, households=12, days=2, min_score=0.25)).to_json()
    assert other["arms"] != first["arms"]
