"""Live-sale waves on the device (issue 19): the signed `SoldOut` notice broadcast on
`cohort/{c}/soldout` so devices stop claiming a wave's offers, and the clock offset a
device keeps against the gateway's signed time to reveal sealed offers at the second.

Pure: a model and arithmetic, no I/O. A wave's offers reach devices ahead of time in the
ordinary signed bundles with `not_before` (`protocol.envelopes.Offer`): a device neither
shows nor claims one before `not_before` on the gateway's clock, estimated as its own clock
plus the offset `GatewayClock` keeps from signed timestamps it received live.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import Field

from protocol.envelopes import Cohort, Id, Signed, UtcTime

SIGNING_ROLE = "offers"
"""The gateway key role a sold-out notice must be signed with (it changes offers)."""
MAX_SOLD_OUT = 200


class SoldOut(Signed):
    """Signed, on `cohort/{cohort}/soldout` (retained: a device connecting late learns it
    too): the offers whose stock is gone at `at`. `version` only increases per cohort (the
    gateway's clock in milliseconds); each notice lists every offer sold out now, so the
    newest one alone is the truth (stock added back drops an offer from the list)."""

    id: Id
    cohort: Cohort
    version: Annotated[int, Field(ge=1)]
    at: UtcTime
    """The gateway's time when it was issued (also a signed time sample)."""
    offers: Annotated[list[Id], Field(max_length=MAX_SOLD_OUT)]


MODELS = (SoldOut,)
"""What this module adds to the downlink contract (`protocol.docs`)."""

SAMPLES = 8
MAX_OFFSET = timedelta(days=1)


class GatewayClock:
    """The offset of the gateway's clock from this device's, from signed times received
    live: `offset = gateway_time - local_receive_time`. A sample is late by the transit
    (always >= 0), so the largest offset of the recent samples is the best estimate (the one
    least delayed); a retained message is old by an unknown time and must not be fed."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self._samples: deque[float] = deque(maxlen=max(1, samples))

    def observe(self, gateway_time: datetime, local_time: datetime) -> None:
        offset = (gateway_time - local_time).total_seconds()
        if abs(offset) <= MAX_OFFSET.total_seconds():  # a wildly wrong clock is ignored
            self._samples.append(offset)

    @property
    def known(self) -> bool:
        return bool(self._samples)

    @property
    def offset_s(self) -> float:
        return max(self._samples) if self._samples else 0.0

    def now(self, local_time: datetime) -> datetime:
        """The gateway's time estimated at `local_time`."""
        return local_time + timedelta(seconds=self.offset_s)


def revealed(not_before: datetime | None, gateway_now: datetime) -> bool:
    """Whether a sealed offer may be shown and claimed at `gateway_now`."""
    return not_before is None or gateway_now >= not_before
