"""The pure rules of group buys and price cuts (issue 19), property by property: the cut's
published schedule, codes, seats and rate limits."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud_gateway.campaigns.model import OfferTemplate
from cloud_gateway.social import rules
from protocol.social import CODE_ALPHABET, CODE_LENGTH, SocialRequest

prices = st.integers(min_value=0, max_value=10_000_000).map(lambda c: c / 100)


@settings(max_examples=60, deadline=None)
@given(prices, st.floats(min_value=0, max_value=1), st.integers(min_value=1, max_value=100))
def test_the_cut_schedule_falls_monotonically_to_the_floor(
    price: float, share: float, helps: int
) -> None:
    floor = round(price * share, 2)
    schedule = rules.cut_schedule(price, floor, helps)
    assert len(schedule) == helps + 1
    assert schedule[0] == price
    assert schedule[-1] == pytest.approx(floor, abs=0.005)
    assert all(a >= b for a, b in itertools.pairwise(schedule))
    assert all(p >= floor - 0.005 for p in schedule)
    # deterministic and front-loaded: the first help cuts at least as much as the last
    assert schedule == rules.cut_schedule(price, floor, helps)
    if helps > 1:
        assert schedule[0] - schedule[1] >= schedule[-2] - schedule[-1] - 0.011
    assert rules.price_after(price, floor, helps, helps + 5) == schedule[-1]


def test_a_schedule_cannot_rise_or_be_empty() -> None:
    with pytest.raises(ValueError, match="floor"):
        rules.cut_schedule(10.0, 11.0, 3)
    with pytest.raises(ValueError, match="helps"):
        rules.cut_schedule(10.0, 1.0, 0)
    assert rules.cut_schedule(100.0, 40.0, 3) == (100.0, 70.0, 50.0, 40.0)


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=CODE_ALPHABET, min_size=CODE_LENGTH, max_size=CODE_LENGTH))
def test_codes_read_back_however_they_are_typed(code: str) -> None:
    typed = code.lower().replace("0", "o").replace("1", "l")
    spaced = f"{typed[:4]}-{typed[4:]}"
    assert rules.normalise_code(spaced) == code
    assert rules.normalise_code(code + "X") is None
    assert rules.normalise_code(code[:-1] + "!") is None


def test_new_codes_are_well_formed_and_do_not_repeat() -> None:
    codes = {rules.new_code() for _ in range(2000)}
    assert len(codes) == 2000
    assert all(rules.normalise_code(c) == c for c in codes)


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["open", "formed", "expired"]),
    st.integers(min_value=2, max_value=50),
    st.integers(min_value=0, max_value=60),
    st.integers(min_value=-100, max_value=100),
    st.booleans(),
)
def test_a_seat_is_given_only_in_an_open_group_with_room_in_time(
    state: str, size: int, seats: int, left_s: int, has_seat: bool
) -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    seat = rules.seat_for(
        state=state,
        size=size,
        seats=seats,
        ends_at=now + timedelta(seconds=left_s),
        now=now,
        household_has_seat=has_seat,
    )
    assert seat.ok == (state == "open" and seats < size and left_s > 0 and not has_seat)
    assert seat.ok or seat.reason


def test_rate_limits_name_what_was_exceeded() -> None:
    assert rules.over_limit(0, 0) is None
    assert "device" in (rules.over_limit(rules.HELPS_PER_DEVICE_HOUR, 0) or "")
    assert "household" in (rules.over_limit(0, rules.HELPS_PER_HOUSEHOLD_HOUR) or "")


def test_offers_are_validated_with_field_errors() -> None:
    base = {"title": "t", "category": "kitchen", "surfaces": ["tv_home_banner"], "price": 100}
    with pytest.raises(ValidationError, match="cut terms"):
        OfferTemplate.model_validate({**base, "type": "price_cut"})
    with pytest.raises(ValidationError, match="floor"):
        OfferTemplate.model_validate(
            {**base, "type": "price_cut", "cut": {"floor": 120, "helps": 3, "window_s": 3600}}
        )
    with pytest.raises(ValidationError, match="only for group_buy"):
        OfferTemplate.model_validate(
            {**base, "type": "coupon", "group": {"size": 3, "window_s": 3600, "price": 50}}
        )
    with pytest.raises(ValidationError, match="size"):
        OfferTemplate.model_validate(
            {**base, "type": "group_buy", "group": {"size": 1, "window_s": 3600, "price": 50}}
        )
    ok = OfferTemplate.model_validate(
        {**base, "type": "group_buy", "group": {"size": 3, "window_s": 3600, "price": 50}}
    )
    assert ok.group is not None
    assert ok.group.size == 3


def test_requests_need_what_their_action_needs() -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    with pytest.raises(ValidationError, match="needs a code"):
        SocialRequest(id="r1", device_id="dev-001", action="group_join", at=now)
    with pytest.raises(ValidationError, match="campaign_id and offer_id"):
        SocialRequest(id="r1", device_id="dev-001", action="cut_start", at=now)
    with pytest.raises(ValidationError):
        SocialRequest(id="r1", device_id="dev-001", action="cut_help", code="ILOU0000", at=now)
