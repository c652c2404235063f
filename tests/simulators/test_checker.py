"""The loss checker QA relies on: it must see every lost, duplicated or unexpected signal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from simulators.checker import check


def test_all_stored_once_is_ok() -> None:
    report = check({"tv-1": ["a", "b"], "hub-1": ["c"]}, {"tv-1": ["b", "a"], "hub-1": ["c"]})
    assert report.ok
    assert (report.accepted, report.stored, report.lost) == (3, 3, 0)


def test_lost_duplicated_and_unexpected_are_counted() -> None:
    report = check({"tv-1": ["a", "b", "c"]}, {"tv-1": ["a", "a", "x"], "hub-1": ["y"]})
    assert not report.ok
    assert report.lost == 2
    assert report.duplicated == 1
    assert report.unexpected == 2
    assert report.lost_ids == ("tv-1/b", "tv-1/c")


def test_a_signal_stored_under_another_device_is_lost_and_unexpected() -> None:
    report = check({"tv-1": ["a"]}, {"phone-1": ["a"]})
    assert (report.lost, report.unexpected) == (1, 1)


@given(st.sets(st.text(min_size=1, max_size=5), max_size=30), st.data())
def test_lost_is_exactly_the_missing_ones(accepted: set[str], data: st.DataObject) -> None:
    stored = data.draw(st.sets(st.sampled_from(sorted(accepted)))) if accepted else set()
    report = check({"d": accepted}, {"d": stored})
    assert report.lost == len(accepted - stored)
    assert report.stored == len(stored)
