"""Intake validation: the attrs size bound that spares encoding is never below the truth; the
outbox rows made of valid signals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Profile, SignalPolicy
from agent.errors import InvalidInput
from agent.intake.validate import MAX_ATTRS_BYTES, _json_size_bound, parse_signal_list, signal_rows

NAMES = st.from_regex(r"[a-z0-9_.:-]{1,64}", fullmatch=True)
VALUES = st.one_of(
    st.text(max_size=256),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)


def _size(attrs: dict[str, Any]) -> int:
    return len(json.dumps(attrs, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(NAMES, VALUES, max_size=32))
def test_the_size_bound_is_never_below_the_encoded_size(attrs: dict[str, Any]) -> None:
    bound = _json_size_bound(attrs)
    try:
        size = _size(attrs)
    except UnicodeEncodeError:  # lone surrogates: only the exact path can refuse them
        assert bound is None
        return
    assert bound is None or bound >= size


def test_intake_refuses_what_is_over_the_limit_or_not_utf8_and_takes_the_rest() -> None:
    ok = parse_signal_list(
        [{"kind": "content_view", "attrs": {"genre": "drama", "seconds": 1800}}], max_items=10
    )
    assert ok[0].attrs == {"genre": "drama", "seconds": 1800}
    assert parse_signal_list(
        [{"kind": "search", "attrs": {"q": "é" * 256}}], max_items=10
    )  # non-ASCII, small: encoded exactly, accepted
    for attrs in (
        {f"k{i}": "x" * 200 for i in range(30)},  # ~6.4 KB of JSON
        {"n": 10**4200},  # a huge integer is as long as its digits (4,201)
        {"q": "\ud800"},  # a lone surrogate is not UTF-8 (pydantic refuses it first)
    ):
        with pytest.raises(InvalidInput) as caught:
            parse_signal_list([{"kind": "search", "attrs": attrs}], max_items=10)
        assert caught.value.errors[0]["loc"].startswith("signals.0.attrs"), caught.value.errors
    assert MAX_ATTRS_BYTES == 4096


def test_rows_carry_each_signals_time_and_its_kinds_priority_and_expiry() -> None:
    profile = Profile(
        name="tv",
        surfaces=["tv_home_banner"],
        signals={
            "default": SignalPolicy(priority=50, ttl_hours=168),
            "purchase": SignalPolicy(priority=90, ttl_hours=720),
        },
    )
    now = datetime(2026, 3, 2, 12, 30, 0, 123456, tzinfo=UTC)
    given_at = datetime(2026, 3, 2, 14, 0, tzinfo=timezone(timedelta(hours=2)))  # 12:00Z
    items: list[dict[str, Any]] = [
        {"kind": "purchase", "attrs": {"sku": "f-1", "price": 9.5}},
        {"kind": "search", "attrs": {"q": "café"}},
        {"kind": "purchase", "at": "2026-03-02T12:00:00Z"},
        {"kind": "purchase", "at": given_at.isoformat()},  # the same instant, another offset
        {"kind": "search"},
    ]
    rows = signal_rows(parse_signal_list(items, max_items=10), now, profile)
    assert [r.kind for r in rows] == [i["kind"] for i in items]
    assert [r.at for r in rows] == [
        "2026-03-02T12:30:00.123Z",
        "2026-03-02T12:30:00.123Z",
        "2026-03-02T12:00:00.000Z",
        "2026-03-02T12:00:00.000Z",
        "2026-03-02T12:30:00.123Z",
    ]
    assert [r.priority for r in rows] == [90, 50, 90, 90, 50]
    assert [r.expires_at for r in rows] == [
        (now + timedelta(hours=720)).timestamp(),
        (now + timedelta(hours=168)).timestamp(),
        (given_at + timedelta(hours=720)).timestamp(),
        (given_at + timedelta(hours=720)).timestamp(),
        (now + timedelta(hours=168)).timestamp(),
    ]
    assert [r.attrs_json for r in rows] == [
        '{"sku":"f-1","price":9.5}',
        '{"q":"café"}',
        "{}",
        "{}",
        "{}",
    ]
    assert len({r.id for r in rows}) == len(rows)
