"""Capped, jittered exponential backoff between reconnect attempts: pure, no clock, no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delay `n` (from 0) is uniform in [b/2, b], b = min(cap, initial * factor**n); with
    `full_jitter`, uniform in [0, b].

    The jitter keeps a fleet that lost its broker together from returning in step; the
    cap bounds how long a device stays away once the broker is back. `reset()` after a
    session was established starts again from `initial`. Full jitter spreads a fleet's
    first reconnects after a broker restart over the whole first step instead of its upper
    half (what AWS's architecture blog measured as the fewest calls for the same work).
    """

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    full_jitter: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap or self.factor < 1:
            raise ValueError("backoff needs 0 < initial <= cap and factor >= 1")

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.initial * self.factor**self.attempt)

    def next(self) -> float:
        """The next delay in seconds; each call moves one step towards the cap."""
        base = self.ceiling()
        if base < self.cap:
            self.attempt += 1  # stops growing at the cap: no float overflow, however long
        return self.rng.uniform(0.0 if self.full_jitter else base / 2, base)

    def reset(self) -> None:
        self.attempt = 0
