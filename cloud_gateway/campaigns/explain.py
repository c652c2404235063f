"""A campaign's explanations (issue 18): the per-device outcome counts devices reported,
folded into what a marketer reads ("reached 3,100 devices; 1,900 shown; 700 held by quiet
hours; 500 capped"). Pure.

A device that reported the campaign was reached. It counts once: as `shown` when any of its
decisions returned one of the campaign's offers, else under the furthest stage its decisions
got to (`protocol.vocabulary.EXPLAIN_STAGES`, the later the closer to being shown), so the
devices under `shown` and the stages add up to `reached`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from protocol.vocabulary import EXPLAIN_OUTCOMES, EXPLAIN_STAGES

_RANK = {name: i for i, name in enumerate(EXPLAIN_STAGES)}
WORDS = {
    "quiet_hours": "held by quiet hours",
    "cap": "capped",
    "household_cap": "held by household caps",
    "holdout": "held out",
    "consent": "without consent",
    "stock": "out of stock",
    "surface": "on another surface",
    "min_score": "scored below the minimum",
    "rank": "outranked",
    "targeting": "not targeted",
    "schedule": "out of schedule",
    "invalid": "invalid",
}


class Explanations(BaseModel):
    """Devices reached, shown, and held back per reason; decisions per outcome."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reached: int
    """Devices that reported a decision while holding the campaign's offers."""
    shown: int
    """Devices where a decision returned one of its offers."""
    held: dict[str, int]
    """Devices never shown, by the furthest stage they reached (every stage listed)."""
    decisions: dict[str, int]
    """Decisions per outcome, over every device (`shown` and each stage)."""
    summary: str


def explain(rows: Iterable[tuple[str, str, int]]) -> Explanations:
    """Fold `(device_id, outcome, count)` rows into `Explanations`."""
    per_device: dict[str, set[str]] = defaultdict(set)
    decisions = dict.fromkeys(EXPLAIN_OUTCOMES, 0)
    for device_id, outcome, count in rows:
        if outcome not in decisions or count <= 0:
            continue
        per_device[device_id].add(outcome)
        decisions[outcome] += count
    held = dict.fromkeys(EXPLAIN_STAGES, 0)
    shown = 0
    for outcomes in per_device.values():
        if "shown" in outcomes:
            shown += 1
        else:
            held[max(outcomes, key=lambda s: _RANK[s])] += 1
    return Explanations(
        reached=len(per_device),
        shown=shown,
        held=held,
        decisions=decisions,
        summary=sentence(len(per_device), shown, held),
    )


def sentence(reached: int, shown: int, held: dict[str, int]) -> str:
    """`reached 3,100 devices; 1,900 shown; 700 held by quiet hours; 500 capped`."""
    parts = [f"reached {reached:,} devices", f"{shown:,} shown"]
    for stage, n in sorted(held.items(), key=lambda kv: (-kv[1], _RANK[kv[0]])):
        if n:
            parts.append(f"{n:,} {WORDS.get(stage, stage)}")
    return "; ".join(parts)
