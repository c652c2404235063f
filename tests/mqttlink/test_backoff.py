"""The reconnect backoff: every delay within [b/2, b] of its step, never past the cap,
jittered, and back to the start after `reset()` (pure: no clock, no broker)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttlink.backoff import Backoff

initials = st.floats(min_value=0.001, max_value=10.0)
caps = st.floats(min_value=0.001, max_value=600.0)
factors = st.floats(min_value=1.0, max_value=10.0)


@given(initial=initials, cap=caps, factor=factors, seed=st.integers(), steps=st.integers(1, 300))
def test_each_delay_is_within_its_step_and_never_past_the_cap(
    initial: float, cap: float, factor: float, seed: int, steps: int
) -> None:
    cap = max(cap, initial)
    backoff = Backoff(initial=initial, cap=cap, factor=factor, rng=random.Random(seed))
    for n in range(steps):
        ceiling = min(cap, initial * factor**n)
        delay = backoff.next()
        assert ceiling / 2 <= delay <= ceiling
        assert delay <= cap


@given(initial=initials, cap=caps, seed=st.integers(), steps=st.integers(0, 100))
def test_reset_starts_again_from_the_initial_delay(
    initial: float, cap: float, seed: int, steps: int
) -> None:
    cap = max(cap, initial)
    backoff = Backoff(initial=initial, cap=cap, rng=random.Random(seed))
    for _ in range(steps):
        backoff.next()
    backoff.reset()
    assert initial / 2 <= backoff.next() <= initial


def test_a_long_outage_stays_at_the_cap_without_overflowing() -> None:
    backoff = Backoff(initial=0.5, cap=30.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(5000)]
    assert min(delays[-1000:]) >= 15.0 and max(delays) <= 30.0


def test_delays_are_jittered_so_a_fleet_does_not_return_in_step() -> None:
    fleet = [Backoff(initial=0.5, cap=30.0, rng=random.Random(seed)) for seed in range(50)]
    for backoff in fleet:
        for _ in range(10):
            backoff.next()
    assert len({round(backoff.next(), 6) for backoff in fleet}) == 50


@pytest.mark.parametrize(("initial", "cap", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_a_backoff_that_could_not_back_off_is_refused(
    initial: float, cap: float, factor: float
) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=initial, cap=cap, factor=factor)


@given(initial=initials, cap=caps, seed=st.integers(), steps=st.integers(1, 100))
def test_full_jitter_delays_are_within_zero_and_their_step(
    initial: float, cap: float, seed: int, steps: int
) -> None:
    cap = max(cap, initial)
    backoff = Backoff(initial=initial, cap=cap, rng=random.Random(seed), full_jitter=True)
    for n in range(steps):
        assert 0.0 <= backoff.next() <= min(cap, initial * 2.0**n)


def test_full_jitter_spreads_a_fleet_over_the_whole_first_window() -> None:
    firsts = [
        Backoff(initial=2.0, rng=random.Random(i), full_jitter=True).next() for i in range(2000)
    ]
    below = sum(1 for d in firsts if d < 1.0) / len(firsts)
    assert 0.4 < below < 0.6  # half of them in the lower half: none there with [b/2, b]
    assert min(firsts) < 0.05
