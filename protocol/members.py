"""Member tiers and points on the device (issue 19): the signed `MemberStatus` a device gets
from the gateway on `dev/{id}/down/member` (retained) and the published tier thresholds.

Pure: models and arithmetic, no I/O. The device ranks `membership_perk` offers (their
`targeting.min_tier`) with the tier of the newest status it verified, never with a tier it
reports about itself. Signed by a key of the `commands` role (a new role would make devices
in the field refuse the key list).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from protocol.envelopes import DeviceId, Id, Signed, UtcTime

SIGNING_ROLE = "commands"
"""The gateway key role a member status must be signed with."""

TierName = Literal["basic", "silver", "gold", "platinum"]
TIERS: tuple[tuple[int, TierName, int], ...] = (
    (0, "basic", 0),
    (1, "silver", 500),
    (2, "gold", 2_000),
    (3, "platinum", 10_000),
)
"""(tier, name, points earned over the member's life from which it holds), published:
a tier follows the points ever earned (conversions, purchases, grants), not the balance,
so spending on a perk never lowers a tier. Offers' `targeting.min_tier` is 0..3."""

MAX_POINTS = 2**53
"""Bound of a balance or an entry (JSON-safe integers)."""


def tier_of(earned: int) -> int:
    """The tier of a member who has earned `earned` points."""
    tier = 0
    for number, _name, threshold in TIERS:
        if earned >= threshold:
            tier = number
    return tier


def tier_name(tier: int) -> TierName:
    return TIERS[min(max(tier, 0), len(TIERS) - 1)][1]


class MemberStatus(Signed):
    """Signed, retained on `dev/{device_id}/down/member`: the tier and points balance of the
    member owning the device. `version` only increases (the gateway's ledger sequence); a
    device takes a status only for itself and at a higher version than the one it holds.
    An empty retained payload (the gateway clears it at an erasure or unlink) drops it."""

    id: Id
    device_id: DeviceId
    version: Annotated[int, Field(ge=1, le=MAX_POINTS)]
    tier: Annotated[int, Field(ge=0, le=3)]
    tier_name: TierName
    balance: Annotated[int, Field(ge=0, le=MAX_POINTS)]
    earned: Annotated[int, Field(ge=0, le=MAX_POINTS)]
    issued_at: UtcTime


MODELS = (MemberStatus,)
"""What this module adds to the downlink contract (`protocol.docs`)."""
