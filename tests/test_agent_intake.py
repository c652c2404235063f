"""Intake validation: the attrs size bound that spares encoding is never below the truth."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import InvalidInput
from agent.intake import MAX_ATTRS_BYTES, _json_size_bound, parse_signal_list

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
