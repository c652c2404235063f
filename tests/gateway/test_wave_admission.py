"""Admission rounds of a live-sale wave, pure (issue 19): stable uniform tickets, a first
round that admits as many reached devices as there is stock, later rounds that let every
wanting device in while stock remains, and a flash crowd that reaches the gateway with
hardly a claim past the stock."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_gateway.campaigns.admission import (
    QUIET_S,
    ROUND_MAX_S,
    Admission,
    first_share,
    next_slice,
    share_at,
    target,
    tickets_of,
)
from protocol.waves import admitted, ticket


def test_tickets_are_stable_uniform_and_differ_per_offer() -> None:
    devices = [f"tv-{i:05d}" for i in range(4000)]
    a = [ticket(d, "wave-a") for d in devices]
    assert a == [ticket(d, "wave-a") for d in devices]  # the gateway recomputes the same
    assert all(0.0 <= t < 1.0 for t in a)
    for lo in (0.0, 0.25, 0.5, 0.75):  # each quarter holds a quarter (+- 4 sd)
        inside = sum(lo <= t < lo + 0.25 for t in a)
        assert abs(inside - 1000) < 4 * (4000 * 0.25 * 0.75) ** 0.5
    first_a = set(sorted(devices, key=lambda d: ticket(d, "wave-a"))[:100])
    first_b = set(sorted(devices, key=lambda d: ticket(d, "wave-b"))[:100])
    assert len(first_a & first_b) < 20  # not always the same devices first
    assert admitted("tv-00001", "wave-a", None) and admitted("tv-00001", "wave-a", 1.0)


def test_a_share_admits_exactly_that_many_reached_devices() -> None:
    devices = [f"tv-{i:04d}" for i in range(300)]
    tickets = tickets_of(devices, "wave-a")
    for n in (0, 1, 10, 299):
        assert sum(admitted(d, "wave-a", share_at(tickets, n)) for d in devices) == n
    assert share_at(tickets, 300) == 1.0
    share = first_share(10, tickets)
    assert share is not None
    assert sum(admitted(d, "wave-a", share) for d in devices) == 10
    assert first_share(300, tickets) is None  # no more devices than stock: everyone
    assert first_share(10, ()) is None  # nobody known: everyone


@settings(max_examples=50, deadline=None)
@given(step=st.integers(1, 10_000), got=st.integers(0, 500), left=st.integers(0, 500))
def test_every_round_takes_a_coupon_or_doubles_its_slice(step: int, got: int, left: int) -> None:
    grown = next_slice(step, got, left)
    if left == 0:
        assert grown == 0  # sold out: nothing opens
    elif got == 0:
        assert grown == 2 * step
    else:
        assert 1 <= grown <= 2 * step
        assert grown * got / step <= target(left) + got / step  # aims short of the stock


def _sale(devices: list[str], wanting: set[str], stock: int, rng: random.Random) -> dict[str, int]:
    """A wave's rounds on a fake clock: each admitted wanting device claims once within the
    round (claims decided in arrival order, never past the stock)."""
    oid = f"wave-{rng.randrange(10**9)}"
    tickets = tickets_of(devices, oid)
    first = first_share(stock, tickets)
    rounds = Admission()
    left, taken, claimed, after, now, n = stock, 0, set[str](), 0, 0.0, 0
    share = 1.0 if first is None else rounds.start(oid, tickets, first, taken=0, left=left, now=0)
    while True:
        n += 1
        turn = [d for d in wanting - claimed if admitted(d, oid, share)]
        rng.shuffle(turn)
        for d in turn:
            claimed.add(d)
            if left > 0:
                left, taken = left - 1, taken + 1
            else:
                after += 1  # reached the gateway after sold out
        if left == 0 or share >= 1.0:
            break
        now += ROUND_MAX_S + QUIET_S
        share = rounds.observe(oid, taken, left, now)
        assert n < stock + 64, "the rounds must end"
    return {"granted": taken, "after": after, "claimed": len(claimed), "rounds": n}


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    devices=st.integers(20, 300),
    wanting_pct=st.integers(1, 100),
    stock=st.integers(1, 60),
)
def test_no_wanting_device_is_shut_out_and_nothing_oversold(
    seed: int, devices: int, wanting_pct: int, stock: int
) -> None:
    rng = random.Random(seed)
    ids = [f"tv-{seed}-{i}" for i in range(devices)]
    wanting = {d for d in ids if rng.random() * 100 < wanting_pct}
    got = _sale(ids, wanting, stock, rng)
    assert got["granted"] == min(stock, len(wanting))  # nothing oversold, none left unsold
    if len(wanting) <= stock:
        assert got["claimed"] == len(wanting) and got["after"] == 0  # every one got in


def test_a_flash_crowd_reaches_the_gateway_with_hardly_a_claim_past_the_stock() -> None:
    """Everyone wanting: the first round admits exactly the stock (no claim refused); a
    crowd of whom a third want it: under 5 % of them claim past the stock in every sale;
    without admission 900 of 1,000 would."""
    rng = random.Random(19)
    ids = [f"tv-{i:04d}" for i in range(1000)]
    assert {_sale(ids, set(ids), 100, rng)["after"] for _ in range(3)} == {0}
    third = set(ids[::3])
    afters = [_sale(ids, third, 100, rng)["after"] for _ in range(10)]
    assert max(afters) < 0.05 * len(third)
    small = [f"tv-{i:04d}" for i in range(60)]
    assert _sale(small, set(small), 10, rng)["after"] == 0  # the integration test's sale
    assert _sale(ids, set(ids), 1000, rng)["after"] == 0  # stock for all: no admission
