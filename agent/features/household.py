"""The household's shared context as a decision reads it: what the household's coordinator
(`agent.household`, issue 17) gathered from the home's devices, each contribution under its
contributing device's consent. The seam between the LAN side (which fills it) and the feature
side (which turns it into `household.*` model features)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

__all__ = ["EMPTY_HOUSEHOLD", "HouseholdContext", "HouseholdSource"]

_NO_NEEDS: Mapping[str, float] = MappingProxyType({})
_NO_COUNTS: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class HouseholdContext:
    """One snapshot of the household's context, as the coordinator last served it."""

    household_id: str
    consumable_need: Mapping[str, float] = field(default_factory=lambda: _NO_NEEDS)
    """Category -> need in [0, 1] (1: the consumable is used up), from the home's appliances."""
    category_count_24h: Mapping[str, int] = field(default_factory=lambda: _NO_COUNTS)
    """Category -> signals in the last 24 h summed over the consenting devices of the home."""
    member_tier: int = 0
    """The household member's tier (0: none)."""
    active_devices: int = 0
    """Devices of the home seen by the coordinator in the last hour."""
    as_of: float = 0.0
    """Unix seconds when the coordinator computed this snapshot."""


EMPTY_HOUSEHOLD = HouseholdContext(household_id="")
"""No household context: alone on the LAN, no coordinator, or no consent to use it."""


class HouseholdSource(Protocol):
    """What the feature side reads of the LAN side: the latest snapshot, or None."""

    def household_context(self) -> HouseholdContext | None: ...
