"""Live-sale waves on the device (issue 19): the signed `SoldOut` notice broadcast on
`cohort/{c}/soldout` so devices stop claiming a wave's offers (and, with its `admit`, let
more of the crowd in), the clock offset a device keeps against the gateway's signed time to
reveal sealed offers at the second, and each device's lottery `ticket` for an offer.

Pure: a model and arithmetic, no I/O. A wave's offers reach devices ahead of time in the
ordinary signed bundles with `not_before` (`protocol.envelopes.Offer`): a device neither
shows nor claims one before `not_before` on the gateway's clock, estimated as its own clock
plus the offset `GatewayClock` keeps from signed timestamps it received live.
"""

from __future__ import annotations

import hashlib
from collections import deque
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import Field

from protocol.envelopes import Cohort, Finite, Id, Signed, UtcTime

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
    admit: Annotated[
        dict[Id, Annotated[Finite, Field(gt=0, le=1)]], Field(max_length=MAX_SOLD_OUT)
    ] = Field(default_factory=dict)
    """Wave offers still in stock whose admission share grew since their reveal (added
    field): a device whose `ticket` for the offer is below the share may claim it now. The
    larger of this and the offer's own `admit` holds; an offer listed sold out is closed."""


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


def ticket(device_id: str, offer_id: str) -> float:
    """A device's stable lottery ticket for one offer, uniform in [0, 1): the first 8 bytes
    of SHA-256 over `offer_id/device_id`. Anyone (the gateway, an auditor) can recompute it;
    a device cannot pick it, and it differs per offer, so no device is always last."""
    digest = hashlib.sha256(f"{offer_id}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def admitted(device_id: str, offer_id: str, share: float | None) -> bool:
    """Whether a device may claim a wave's offer at admission `share` (None: everyone)."""
    return share is None or share >= 1.0 or ticket(device_id, offer_id) < share
