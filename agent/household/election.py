"""Who coordinates the household, pure: the hub when one is present (the lowest fingerprint
of the hubs), else the member with the lowest key fingerprint. Thin devices and appliances
are never elected. Every device computes it from the same verified adverts, so all agree
without a vote; when the coordinator leaves (goodbye or TTL expiry) the next one follows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ELIGIBLE = ("hub", "member")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A verified advert as the election sees it."""

    fingerprint: str
    role: str
    host: str
    port: int


def elect(candidates: Iterable[Candidate]) -> Candidate | None:
    """The coordinator among `candidates` (self included), or None when none is eligible."""
    eligible = [c for c in candidates if c.role in ELIGIBLE]
    if not eligible:
        return None
    hubs = [c for c in eligible if c.role == "hub"]
    return min(hubs or eligible, key=lambda c: c.fingerprint)
