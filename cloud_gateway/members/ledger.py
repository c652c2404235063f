"""The points ledger's rules, pure: entry kinds, hashed source keys, per-tier figures.

Tiers and their thresholds are the published ones of `protocol.members.TIERS`
(docs/members.md): a member's tier follows the points it ever earned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from protocol.members import TIERS, tier_of

EntryKind = Literal["conversion", "purchase", "grant", "spend"]
EARNING: tuple[EntryKind, ...] = ("conversion", "purchase", "grant")
"""Kinds that credit points (an attributed conversion, a purchase, an operator's grant)."""
SPEND: EntryKind = "spend"
"""Points spent on a perk: lowers the balance, never the tier."""


def source_hash(key: str) -> str:
    """What the ledger stores of a source key: its SHA-256 (hex). A key names a device and
    an outcome (`conversion:<device>:<outcome>`) or an operator's order id; its hash stays
    after an erasure to refuse a redelivery, and names no one."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger entry before it is stored; `points` > 0 (a spend is stored negative)."""

    kind: EntryKind
    points: int
    source: str
    campaign_id: str | None = None


@dataclass(frozen=True, slots=True)
class TierFigures:
    """A tier's members and the points they were issued and spent; tier `erased` (-1) holds
    the erased members' totals."""

    tier: int
    name: str
    threshold: int | None
    members: int
    issued: int
    spent: int

    def to_json(self) -> dict[str, object]:
        return {
            "tier": self.tier,
            "name": self.name,
            "threshold": self.threshold,
            "members": self.members,
            "points_issued": self.issued,
            "points_spent": self.spent,
        }


def tier_figures(
    members: Iterable[tuple[int, int]], erased: tuple[int, int] = (0, 0)
) -> list[TierFigures]:
    """Per tier (every published one, then `erased`): from each member's (earned, spent)."""
    counts = {t: [0, 0, 0] for t, _n, _th in TIERS}
    for earned, spent in members:
        row = counts[tier_of(earned)]
        row[0] += 1
        row[1] += earned
        row[2] += spent
    out = [TierFigures(t, name, threshold, *counts[t]) for t, name, threshold in TIERS]
    out.append(TierFigures(-1, "erased", None, 0, erased[0], erased[1]))
    return out
