"""The loss checker QA relies on: it must see every lost, duplicated or unexpected signal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from simulators.checker import Drops, account, check


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


def test_a_device_that_did_not_drain_is_named_undelivered_not_lost() -> None:
    accepted = {"slow": [f"s{i}" for i in range(10)], "ok": ["a", "b"]}
    stored = {"slow": ["s0", "s1", "s2", "s3"], "ok": ["a", "b"]}
    books = account(accepted, stored, {}, held={"slow": 6, "ok": 0})
    assert (books.lost, books.undelivered) == (0, 6)
    assert books.undelivered_by_device == (("slow", 6),)
    assert "undelivered 6 (still on 1 devices)" in books.line()


def test_only_what_the_device_still_holds_is_undelivered_the_rest_is_lost() -> None:
    accepted = {"d": [f"s{i}" for i in range(10)]}
    books = account(accepted, {"d": ["s0"]}, {"d": Drops(evicted=2)}, held={"d": 3})
    assert (books.undelivered, books.lost) == (3, 4)  # 10 - 1 stored - 2 evicted - 3 held


def test_held_is_the_outbox_rows_and_the_unconfirmed_aggregates() -> None:
    status = {"accounting": {"signals_held": 5, "aggregate_unacked": 7}}
    assert Drops.held(status) == 12
    assert Drops.held({}) == 0
