"""Which broker of a cluster to try next: in order, from the last that worked; pure, no I/O.

A client given several brokers (the nodes of one cluster) moves to the next on a failed
connect or a lost session, at once: a dead node costs one connect attempt, not a backoff step.
Only when every broker has failed once since the last session that held (a full round) does
the caller back off. A session that was set up but did not hold (shorter than the caller's
stable time, e.g. two clients with one id taking the session from each other) counts as a
failure of the round, so a cluster that accepts and drops at once is not hammered in a loop.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Rotation:
    """`current` is the broker to try; `failed()` moves on and says when a round is over."""

    size: int = 1
    current: int = 0
    failures: int = 0
    """Failures since the last session that held (or since the last full round)."""

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.current < self.size:
            raise ValueError("a rotation needs at least one broker and a current one among them")

    def held(self) -> None:
        """A session on `current` held: the next round starts here."""
        self.failures = 0

    def failed(self) -> bool:
        """`current` failed (a connect, a setup, or its session ended): move to the next. True
        when every broker has now failed once in this round: back off before trying again."""
        self.failures += 1
        self.current = (self.current + 1) % self.size
        if self.failures >= self.size:
            self.failures = 0
            return True
        return False
