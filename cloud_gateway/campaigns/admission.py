"""Admission rounds of a live-sale wave (issue 19), pure: how large a share of the crowd may
claim a wave's offer now, so that no more claims reach the gateway than there is stock.

The flash crowd is absorbed at the edge the way ticketed drops and virtual waiting rooms do
it: a random order fixed up front, then admission in slices sized to the stock left. Each
device holds a stable ticket per offer (`protocol.waves.ticket`, uniform in [0, 1)) that the
gateway can compute too; a device claims only while its ticket is below the offer's share.
The gateway knows the registered devices the sale reaches, so it sets each share at a ticket
of theirs: a share admits an exact number of them (`share_at`).

* The first round admits `stock` devices: were every one of them to claim, none would be
  refused; fewer claim when fewer want it.
* Each later round sizes its slice from what the last one yielded: a slice of `step` devices
  that took `got` coupons says `got / step` of them want it, so the next slice aims a little
  short of the coupons left (`target`), at most twice the last (a slice that took few by
  chance must not open the gates); a slice that took nothing doubles.

Every round thus takes a coupon or doubles its slice: the share reaches 1 (everyone, known or
not, admitted) or the stock 0 within `stock + log2(devices)` rounds, and no wanting device is
shut out while stock remains. Sold out closes the offer for everyone (the `SoldOut` notice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.waves import ticket

ROUND_MIN_S = 1.0
"""A round lasts at least this long (the admitted devices' claims reach the gateway)..."""
QUIET_S = 0.5
"""...and ends once no coupon went for this long..."""
ROUND_MAX_S = 3.0
"""...or after this long in any case (a crowd that keeps pressing)."""
MIN_SHARE = 1e-12
"""The least share sent (the wire's `admit` is > 0): admits no device in practice."""


def target(left: int) -> float:
    """The claims a later round aims at with `left` in stock: `left - sqrt(left)` (at least
    one). A slice's yield is only estimated; aiming one deviation short makes a round that
    overshoots (claims refused sold out) rare, at the cost of a round more."""
    return max(left - math.sqrt(left), 1.0)


def tickets_of(devices: Sequence[str], offer_id: str) -> tuple[float, ...]:
    """The sorted tickets of `devices` for one offer."""
    return tuple(sorted(ticket(d, offer_id) for d in devices))


def share_at(tickets: Sequence[float], admitted: int) -> float:
    """The share admitting exactly the first `admitted` of these sorted tickets (1.0: all,
    and any device not among them)."""
    if admitted >= len(tickets):
        return 1.0
    return max(tickets[max(admitted, 0)], MIN_SHARE)


def first_share(stock: int, tickets: Sequence[float]) -> float | None:
    """The share admitted at the reveal: `stock` of the reached devices. None (everyone)
    when no more devices are reached than there is stock."""
    if stock <= 0 or len(tickets) <= stock:
        return None
    return share_at(tickets, stock)


def next_slice(step: int, got: int, left: int) -> int:
    """The devices admitted by the next round after a slice of `step` took `got` coupons,
    with `left` in stock (0 when none is left)."""
    if left <= 0:
        return 0
    if got <= 0:
        return 2 * step
    return max(1, min(2 * step, math.ceil(step * target(left) / got)))


@dataclass(slots=True)
class Round:
    """One offer's admission now: the reached devices' sorted tickets, how many of them are
    admitted, the slice the round opened, the coupons taken when it opened and when a coupon
    last went (monotonic seconds), and the stock left."""

    tickets: tuple[float, ...]
    admitted: int
    step: int
    taken_at_open: int
    opened: float
    taken: int
    changed: float
    left: int

    @property
    def share(self) -> float:
        return share_at(self.tickets, self.admitted)

    def observe(self, taken: int, left: int, now: float) -> bool:
        """Take the offer's coupons taken and left at `now`; True when the share grew."""
        self.left = left
        if taken != self.taken:
            self.taken, self.changed = taken, now
        if left <= 0 or self.share >= 1.0:
            return False
        aged = now - self.opened
        if aged < ROUND_MAX_S and (aged < ROUND_MIN_S or now - self.changed < QUIET_S):
            return False
        self.step = next_slice(self.step, taken - self.taken_at_open, left)
        self.admitted += self.step
        self.taken_at_open, self.opened = taken, now
        return True


class Admission:
    """The rounds of every revealed wave offer with an admission share (by offer id)."""

    def __init__(self) -> None:
        self._rounds: dict[str, Round] = {}

    def knows(self, offer_id: str) -> bool:
        return offer_id in self._rounds

    def start(
        self,
        offer_id: str,
        tickets: tuple[float, ...],
        first: float,
        *,
        taken: int,
        left: int,
        now: float,
    ) -> float:
        """Open the first round at the reveal: the devices the signed `first` share admits
        (whoever registered since the sale was made)."""
        admitted = sum(t < first for t in tickets)
        step = max(admitted, 1)
        self._rounds[offer_id] = Round(tickets, admitted, step, taken, now, taken, now, left)
        return self._rounds[offer_id].share

    def observe(self, offer_id: str, taken: int, left: int, now: float) -> float:
        """The offer's share now, rounds advanced (`start` first)."""
        held = self._rounds[offer_id]
        held.observe(taken, left, now)
        return held.share

    def share(self, offer_id: str) -> float | None:
        """The offer's share now, or None when its rounds have not opened here."""
        held = self._rounds.get(offer_id)
        return None if held is None else held.share

    @property
    def open(self) -> bool:
        """Whether a round may still grow (the desk then looks often)."""
        return any(r.share < 1.0 and r.left > 0 for r in self._rounds.values())

    def retain(self, offer_ids: set[str]) -> None:
        """Forget offers no longer in a live sale (bounded state)."""
        for oid in set(self._rounds) - offer_ids:
            del self._rounds[oid]
