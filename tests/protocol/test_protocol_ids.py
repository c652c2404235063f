"""Ids: UUIDv7 text as RFC 9562 lays it out, made one at a time or a request's worth at once."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from protocol.ids import new_id, new_ids

MS = st.integers(min_value=0, max_value=(1 << 48) - 1)


@given(MS, st.integers(min_value=1, max_value=50))
def test_ids_are_canonical_uuid7_of_their_millisecond(now_ms: int, count: int) -> None:
    ids = new_ids(count, now_ms)
    assert len(ids) == count
    for text in [*ids, new_id(now_ms)]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical: lower-case hex, 8-4-4-4-12
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert parsed.int >> 80 == now_ms


@given(MS, MS)
def test_ids_sort_by_time(a: int, b: int) -> None:
    if a != b:
        assert (new_id(a) < new_id(b)) == (a < b)


def test_ids_are_unique() -> None:
    ids = new_ids(10_000, 1_700_000_000_000)
    assert len(set(ids)) == len(ids)
