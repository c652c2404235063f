"""The experiments' pure parts: Wilson intervals, the mSPRT and its decisions, the fixed
horizon, and the stable split devices and gateway compute alike."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model.update import rollout_key
from cloud_gateway.registry.experiment_stats import (
    ArmCounts,
    Plan,
    decide,
    fixed_horizon_n,
    log_lambda,
    wilson,
)
from cloud_gateway.registry.experiments import experiment_id, in_candidate
from models.layout import DEFAULT_DIR
from protocol.assign import in_rollout
from protocol.envelopes import ModelManifest

counts = st.integers(min_value=0, max_value=10**6)
MANIFEST = ModelManifest.model_validate_json((DEFAULT_DIR / "manifest.json").read_text())


@given(counts, counts)
def test_wilson_interval_holds_the_rate_within_zero_and_one(successes: int, extra: int) -> None:
    trials = successes + extra
    interval = wilson(successes, trials)
    assert 0.0 <= interval.low <= interval.value <= interval.high <= 1.0
    if trials:
        assert interval.value == successes / trials
        wider = wilson(successes, trials, z=2.58)
        assert wider.low <= interval.low + 1e-12
        assert wider.high >= interval.high - 1e-12


def test_wilson_narrows_with_more_trials() -> None:
    widths = [wilson(n // 10, n).high - wilson(n // 10, n).low for n in (100, 1000, 10000)]
    assert widths[0] > widths[1] > widths[2]
    assert wilson(0, 0) == wilson(0, 0).__class__(0.0, 0.0, 0.0)


@given(
    st.integers(0, 5000),
    st.integers(1, 5000),
    st.integers(0, 5000),
    st.integers(1, 5000),
    st.floats(0.01, 5.0),
)
def test_msprt_is_symmetric_and_no_evidence_without_a_gap(
    x0: int, extra0: int, x1: int, extra1: int, mde: float
) -> None:
    n0, n1 = x0 + extra0, x1 + extra1
    forward = log_lambda(x0, n0, x1, n1, mde)
    assert math.isfinite(forward)
    assert forward == log_lambda(x1, n1, x0, n0, mde) or math.isclose(
        forward, log_lambda(x1, n1, x0, n0, mde), rel_tol=1e-9, abs_tol=1e-12
    )
    # the same rate in both arms is never evidence of a difference
    assert log_lambda(x0, n0, x0, n0, mde) <= 0.0


@given(st.integers(200, 20000), st.floats(0.01, 0.3))
def test_msprt_grows_with_the_gap(n: int, rate: float) -> None:
    base = round(rate * n)
    stats = [log_lambda(base, n, base + gap, n, 0.2) for gap in (0, n // 50, n // 20)]
    assert stats[0] <= stats[1] <= stats[2]


def arm(version: int, impressions: int, conversions: int) -> ArmCounts:
    return ArmCounts(version, impressions=impressions, conversions=conversions)


def test_decisions_follow_the_plan() -> None:
    plan = Plan(alpha=0.05, min_impressions=1000, max_hours=48)
    worse = decide(arm(1, 5000, 500), arm(2, 5000, 350), plan, 3.0)
    assert worse.decision == "roll_back"
    assert "hurts conversion" in worse.reason
    assert worse.lift < 0
    assert worse.p_value < 0.05
    better = decide(arm(1, 5000, 350), arm(2, 5000, 500), plan, 3.0)
    assert better.decision == "promote"
    assert better.lift > 0
    # a wide gap below the minimum impressions: no verdict yet
    assert decide(arm(1, 900, 90), arm(2, 900, 10), plan, 3.0).decision == "continue"
    # no difference: continue, then stop at the horizon without a verdict
    assert decide(arm(1, 5000, 400), arm(2, 5000, 400), plan, 47.9).decision == "continue"
    stop = decide(arm(1, 5000, 400), arm(2, 5000, 400), plan, 48.0)
    assert stop.decision == "stop"
    assert "no verdict after 48 h" in stop.reason


def test_false_verdicts_stay_below_alpha_under_continuous_looks() -> None:
    """A/A: two arms of the same model looked at every hour for five days; the always-valid
    test's false verdicts stay below alpha (the peeking a fixed test cannot bear)."""
    rng = np.random.default_rng(18)
    plan = Plan(alpha=0.05, min_impressions=500, max_hours=10**6)
    runs, looks, hourly, rate = 200, 120, 300, 0.05
    shown = hourly * np.arange(1, looks + 1)
    conversions = rng.binomial(hourly, rate, size=(runs, 2, looks)).cumsum(axis=2)
    false = 0
    for run in range(runs):
        for look in range(looks):
            c0, c1 = int(conversions[run, 0, look]), int(conversions[run, 1, look])
            n = int(shown[look])
            if decide(arm(1, n, c0), arm(2, n, c1), plan, look).decision != "continue":
                false += 1
                break
    assert false / runs <= plan.alpha


def test_fixed_horizon_needs_more_for_smaller_effects() -> None:
    assert fixed_horizon_n(0.05, 0.1) > fixed_horizon_n(0.05, 0.2) > fixed_horizon_n(0.05, 0.5)
    # the textbook figure: 5 % -> 6 % at alpha 0.05, power 0.8 needs ~8,150 per arm
    assert 8000 < fixed_horizon_n(0.05, 0.2) < 8300


@settings(max_examples=50)
@given(st.lists(st.text("abcdef0123456789-", min_size=4, max_size=20), min_size=1, max_size=20))
def test_the_split_is_the_agents_rollout_check_and_stable(devices: list[str]) -> None:
    manifest = MANIFEST
    exp = experiment_id(manifest.name, manifest.version)
    assert exp == rollout_key(manifest)  # the id is the salt the device hashes with
    for device in devices:
        candidate = in_candidate(device, exp, 0.3)
        assert candidate == in_rollout(device, rollout_key(manifest), 30)
        assert candidate == in_candidate(device, exp, 0.3)  # stable
        if candidate:  # a promotion (a larger share) keeps every candidate device
            assert in_candidate(device, exp, 0.5)
            assert in_rollout(device, exp, 100)


def test_the_split_gives_the_share() -> None:
    devices = [f"tv-{i:05d}" for i in range(4000)]
    share = sum(in_candidate(d, "model:default:7", 0.2) for d in devices) / len(devices)
    assert abs(share - 0.2) < 0.02
    other = sum(in_candidate(d, "model:default:8", 0.2) for d in devices) / len(devices)
    both = sum(
        in_candidate(d, "model:default:7", 0.2) and in_candidate(d, "model:default:8", 0.2)
        for d in devices
    ) / len(devices)
    assert abs(other - 0.2) < 0.02
    assert abs(both - 0.04) < 0.015  # experiments split independently of each other
