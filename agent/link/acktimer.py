"""When an unacked batch is resent: an ack timeout learnt from measured ack latency (TCP's
retransmission timer, RFC 6298) and a capped, jittered exponential backoff per batch.

Pure: no clock, no I/O; the uplink passes the times in. A gateway that falls behind makes
its acks slow; the timeout grows with them and each resend of the same batch waits twice as
long as the last, so the load on it falls instead of feeding a resend storm.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ALPHA = 1 / 8
"""Weight of a new sample in the smoothed latency (RFC 6298, 2.3)."""
BETA = 1 / 4
"""Weight of a new sample's deviation in the latency variance (RFC 6298, 2.3)."""
JITTER = 0.5
"""A resend waits its backed-off timeout times a uniform factor in [1, 1 + JITTER]: devices
that lost their acks together do not resend together."""


@dataclass(slots=True)
class AckTimer:
    """The ack timeout: `initial` until an ack is measured, then smoothed latency + 4 x its
    variance, within [`floor`, `ceiling`]; `resend_after(n)` backs off the n-th resend."""

    initial: float
    floor: float
    ceiling: float
    cap: float
    """The longest wait before any resend, however many came before it."""
    rng: random.Random = field(default_factory=random.Random)
    srtt: float | None = None
    rttvar: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.ceiling or self.cap <= 0 or self.initial <= 0:
            raise ValueError("ack timer needs 0 < floor <= ceiling, cap > 0, initial > 0")

    def observe(self, latency: float) -> None:
        """One ack's latency (seconds from publish to ack) of a batch sent once only: the
        ack of a resent batch could answer either copy (Karn's rule: not sampled)."""
        latency = max(0.0, latency)
        if self.srtt is None:
            self.srtt, self.rttvar = latency, latency / 2
            return
        self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - latency)
        self.srtt = (1 - ALPHA) * self.srtt + ALPHA * latency

    @property
    def timeout(self) -> float:
        """How long a batch sent once waits for its ack before it is resent."""
        if self.srtt is None:
            return max(self.floor, min(self.ceiling, self.initial))
        return max(self.floor, min(self.ceiling, self.srtt + 4 * self.rttvar))

    def resend_after(self, resends: int) -> float:
        """The wait for an ack after the batch's `resends`-th resend (0: its first send),
        doubled each time, jittered upward, at most `cap`."""
        base = min(self.cap, self.timeout * 2.0 ** min(resends, 32))
        return min(self.cap, base * self.rng.uniform(1.0, 1.0 + JITTER))

    def to_json(self) -> dict[str, float | None]:
        return {
            "ack_timeout_s": round(self.timeout, 3),
            "ack_latency_s": None if self.srtt is None else round(self.srtt, 3),
        }
