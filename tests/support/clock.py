"""The one fake wall clock the tests hand to the agent and its store."""

from __future__ import annotations

import time
from datetime import datetime


class FakeClock:
    """Seconds since the epoch, as `time.time` gives them, but set and moved by the test.

    `FakeClock(start)` stands still at `start` (a timestamp or an aware datetime) until the
    test moves it; `FakeClock()` runs with the real clock shifted by `offset`, for agents that
    talk to a real broker while the test travels days back or forth."""

    def __init__(self, start: float | datetime | None = None) -> None:
        self._still = start is not None
        self._at = _seconds(start) if start is not None else 0.0
        self.offset = 0.0

    def __call__(self) -> float:
        return (self._at if self._still else time.time()) + self.offset

    @property
    def now(self) -> float:
        return self()

    @now.setter
    def now(self, value: float) -> None:
        """Stand still at `value` from now on."""
        self._still, self._at, self.offset = True, value, 0.0

    def at(self, moment: datetime) -> datetime:
        """Stand still at `moment`, and return it."""
        self.now = _seconds(moment)
        return moment

    def advance(self, seconds: float) -> None:
        """Move `seconds` forward (or back, when negative)."""
        self.offset += seconds


def _seconds(moment: float | datetime) -> float:
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)
