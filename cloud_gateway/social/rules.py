"""Pure rules of group buys and price cuts: codes, the cut schedule, seats, rate limits.

No I/O: the SQL (`cloud_gateway.db.social`) applies these under its row locks, and the tests
check them property by property.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from protocol.social import CODE_ALPHABET, CODE_LENGTH, normalise_code

__all__ = ["normalise_code"]  # the one copy lives in protocol.social (devices use it too)

HELPS_PER_DEVICE_HOUR = 5
"""Helps one device may give (accepted or not) in an hour: more is a help farm."""
HELPS_PER_HOUSEHOLD_HOUR = 10
"""Helps one household's devices may give together in an hour."""
CODE_TRIES_PER_DEVICE_HOUR = 30
"""Requests naming a code (join, help) one device may send in an hour, found or not: guessing
codes takes 2**40 / 30 hours per device."""


def new_code() -> str:
    """A fresh join or share code: `CODE_LENGTH` Crockford digits from the OS's CSPRNG."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def cut_schedule(price: float, floor: float, helps: int) -> tuple[float, ...]:
    """The published price after each help, in cents: entry k is the price after k helps
    (entry 0 is `price`, entry `helps` is `floor`). Help k takes (helps - k + 1) shares of
    the gap out of helps * (helps + 1) / 2: the first helps cut most, as users expect, and
    the last help lands exactly on the floor. Deterministic: the same terms, the same
    schedule, on any gateway."""
    if helps < 1:
        raise ValueError("helps must be at least 1")
    if floor > price:
        raise ValueError("floor must not exceed price")
    start, end = round(price * 100), round(floor * 100)
    gap = start - end
    total = helps * (helps + 1) // 2
    prices = [start]
    taken = 0
    shares = 0
    for k in range(1, helps + 1):
        shares += helps - k + 1
        taken = gap * shares // total  # integer cents: the same on every machine
        prices.append(start - taken)
    return tuple(p / 100 for p in prices)


def price_after(price: float, floor: float, helps_needed: int, helps: int) -> float:
    """The cut's price after `helps` helps (the floor once `helps_needed` were reached)."""
    schedule = cut_schedule(price, floor, helps_needed)
    return schedule[min(max(helps, 0), helps_needed)]


@dataclass(frozen=True, slots=True)
class Seat:
    """Whether a household may take a seat in a group, and why not."""

    ok: bool
    reason: str = ""


def seat_for(
    *,
    state: str,
    size: int,
    seats: int,
    ends_at: datetime,
    now: datetime,
    household_has_seat: bool,
) -> Seat:
    """May a household take a seat in this group now? One seat per household, never past
    `size`, only while the group is open and its window runs."""
    if household_has_seat:
        return Seat(ok=False, reason="this household already has a seat for this offer")
    if state != "open":
        return Seat(ok=False, reason=f"the group is {state}")
    if now >= ends_at:
        return Seat(ok=False, reason="the group's window has closed")
    if seats >= size:
        return Seat(ok=False, reason="the group is full")
    return Seat(ok=True)


def window_end(start: datetime, window_s: int, offer_expires: datetime | None) -> datetime:
    """When a group or cut started at `start` closes: its window, never past the offer."""
    end = start + timedelta(seconds=window_s)
    return min(end, offer_expires) if offer_expires is not None else end


def over_limit(device_count: int, household_count: int) -> str | None:
    """Why one more help is refused given those already counted in the last hour, or None."""
    if device_count >= HELPS_PER_DEVICE_HOUR:
        return f"rate limit: {HELPS_PER_DEVICE_HOUR} helps per device per hour"
    if household_count >= HELPS_PER_HOUSEHOLD_HOUR:
        return f"rate limit: {HELPS_PER_HOUSEHOLD_HOUR} helps per household per hour"
    return None
