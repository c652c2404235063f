"""Which broker of a cluster to try next (`Rotation`): in order, the backoff only after a
full round, a session that held starts the next round where it was."""

from __future__ import annotations

import pytest

from mqttlink.rotation import Rotation


def test_one_broker_backs_off_after_every_failure() -> None:
    rotation = Rotation()
    assert [rotation.failed() for _ in range(3)] == [True, True, True]
    assert rotation.current == 0


def test_failures_move_to_the_next_broker_and_a_full_round_backs_off() -> None:
    rotation = Rotation(3)
    assert [(rotation.failed(), rotation.current) for _ in range(4)] == [
        (False, 1),
        (False, 2),
        (True, 0),
        (False, 1),
    ]


def test_a_session_that_held_starts_a_new_round_from_the_broker_after_it() -> None:
    rotation = Rotation(3)
    rotation.failed()  # broker 0 down: on to 1
    rotation.held()  # a session on 1 held, then ended
    assert rotation.failed() is False and rotation.current == 2
    assert rotation.failed() is False and rotation.current == 0
    assert rotation.failed() is True and rotation.current == 1  # 1, 2, 0 all failed


def test_a_session_that_did_not_hold_is_a_failure_of_the_round() -> None:
    """Without `held()` (the session dropped at once) no round restarts: three brokers that
    accept and drop cost one backoff per round, not a hot loop."""
    rotation = Rotation(3, current=1)
    assert [rotation.failed() for _ in range(3)] == [False, False, True]
    assert rotation.current == 1


@pytest.mark.parametrize(("size", "current"), [(0, 0), (2, 2), (2, -1)])
def test_a_rotation_needs_a_broker(size: int, current: int) -> None:
    with pytest.raises(ValueError, match="at least one broker"):
        Rotation(size, current)
