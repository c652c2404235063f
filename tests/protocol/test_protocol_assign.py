"""Stable hash assignment: same answer every time, the right shares, independent salts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol.assign import bucket, in_holdout, in_rollout, pick_variant

DEVICES = [f"dev-{i:05d}" for i in range(20_000)]


def test_holdout_share_is_close_to_the_setting() -> None:
    held = sum(in_holdout(d, "camp-1", 0.1) for d in DEVICES)
    assert abs(held / len(DEVICES) - 0.1) < 0.01
    assert not any(in_holdout(d, "camp-1", 0.0) for d in DEVICES[:100])


def test_assignment_is_stable_and_salted() -> None:
    first = [in_holdout(d, "camp-1", 0.2) for d in DEVICES[:2000]]
    assert first == [in_holdout(d, "camp-1", 0.2) for d in DEVICES[:2000]]
    other = [in_holdout(d, "camp-2", 0.2) for d in DEVICES[:2000]]
    assert first != other


def test_variants_follow_weights() -> None:
    picks = [pick_variant(d, "camp-1", {"a": 3, "b": 1}) for d in DEVICES]
    assert abs(picks.count("a") / len(picks) - 0.75) < 0.015


def test_rollout_grows_monotonically() -> None:
    ten = {d for d in DEVICES if in_rollout(d, "tv:7", 10)}
    fifty = {d for d in DEVICES if in_rollout(d, "tv:7", 50)}
    assert ten <= fifty
    assert abs(len(fifty) / len(DEVICES) - 0.5) < 0.015


@given(st.text(min_size=1, max_size=40), st.text(max_size=40))
def test_bucket_is_in_unit_interval(device: str, salt: str) -> None:
    assert 0.0 <= bucket(device, salt) < 1.0
