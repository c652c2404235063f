"""The ack timer: RFC 6298's smoothed latency + 4 x variance within bounds, and resends that
back off exponentially, jittered, up to a cap (before: a fixed 10 s, every 10 s, for ever)."""

from __future__ import annotations

import random

import pytest

from agent.link.acktimer import AckTimer


def timer(**kw: float) -> AckTimer:
    args = {"initial": 10.0, "floor": 1.0, "ceiling": 120.0, "cap": 600.0, **kw}
    return AckTimer(**args, rng=random.Random(7))


def test_the_configured_timeout_holds_until_an_ack_is_measured() -> None:
    assert timer().timeout == 10.0


def test_slow_acks_raise_the_timeout_and_fast_ones_lower_it_within_bounds() -> None:
    t = timer()
    for _ in range(30):
        t.observe(25.0)  # a gateway that fell behind: acks after 25 s
    assert t.timeout > 25.0  # no resend while its ack is on its way
    t2 = timer()
    for _ in range(30):
        t2.observe(0.05)
    assert t2.timeout == 1.0  # the floor
    t3 = timer()
    for _ in range(30):
        t3.observe(500.0)
    assert t3.timeout == 120.0  # the ceiling


def test_varying_latency_widens_the_timeout_beyond_the_mean() -> None:
    steady, jumpy = timer(), timer()
    for i in range(40):
        steady.observe(5.0)
        jumpy.observe(2.0 if i % 2 else 8.0)
    assert jumpy.timeout > steady.timeout + 5.0


def test_each_resend_waits_twice_the_last_jittered_up_to_the_cap() -> None:
    t = timer(cap=100.0)
    waits = [t.resend_after(n) for n in range(10)]
    for n, wait in enumerate(waits):
        base = min(100.0, 10.0 * 2**n)
        assert base <= wait <= min(100.0, base * 1.5)
    assert max(waits) <= 100.0
    assert t.resend_after(10_000) == 100.0  # no overflow however many


def test_jitter_spreads_devices_that_lost_their_acks_together() -> None:
    devices = [AckTimer(10.0, 1.0, 120.0, 600.0, rng=random.Random(i)) for i in range(200)]
    spread = [d.resend_after(0) for d in devices]
    assert max(spread) - min(spread) > 4.0  # over most of [10, 15]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        AckTimer(10.0, 5.0, 1.0, 600.0)
