"""Aggregate mode, pure part: which window and key a signal counts in, and quota charges.

A signal in aggregate mode becomes +1 on the row (window, key) of the window during which
the device accepted it (device clock, so a closed window never changes again), where
`key` is its kind and, when present, its category. Two kinds carry a state the gateway
targets on, so their key also names it: `consumable_level/category=<c>/level=<0..1>` (the
level reported, 2 decimals) and `member_tier/tier=<0..3>`; the count is still the number of
signals, so coverage accounting is unchanged. The uplink sends each changed row as a
cumulative snapshot of the open window (the latest wins at the gateway), so every
aggregate says how many signals it covers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ROW_OVERHEAD = 240
"""Bytes charged per outbox row beyond its content: SQLite record header, rowid, and the
entries of the table's indexes (calibrated against `dbstat` in tests/test_durability_quota)."""
AGGREGATE_ROW_CHARGE = 160
MAX_KEY = 200
MAX_TIER = 3


@dataclass(frozen=True, slots=True)
class AggregateHit:
    """One signal's contribution: +1 (and `seconds`) to the row (window, key)."""

    window: str
    key: str
    seconds: float


def window_label(at: float, window_s: int) -> str:
    """`1h:2026-11-27T06` for an hourly window, `<n>s:<start>` for any other length."""
    start = datetime.fromtimestamp(at - (at % window_s), tz=UTC)
    if window_s == 3600:  # the default, most readable label
        return "1h:" + start.strftime("%Y-%m-%dT%H")
    return f"{window_s}s:" + start.strftime("%Y-%m-%dT%H:%M:%S")


def window_end(label: str) -> float:
    """The end (epoch seconds) of the window a label names."""
    length, _, start = label.partition(":")
    if length == "1h":
        begin = datetime.strptime(start, "%Y-%m-%dT%H").replace(tzinfo=UTC)
        return begin.timestamp() + 3600
    begin = datetime.strptime(start, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return begin.timestamp() + int(length.rstrip("s"))


def _number(value: Any) -> float | None:
    """A finite float of an int or float attr value; None for anything else (NaN, an
    infinity, an integer too big for a float, a string, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def aggregate_key(kind: str, attrs: Mapping[str, Any]) -> str:
    """`kind` or `kind/category=<category>`: what an aggregate counts.

    A `consumable_level` with a numeric `level` adds `/level=<level>` (clamped to 0..1, two
    decimals) and a `member_tier` with a numeric `tier` is `member_tier/tier=<n>`: the state
    itself, since a count alone cannot say how full a filter is or which tier a member has.
    """
    category = attrs.get("category")
    if kind == "member_tier":
        tier = _number(attrs.get("tier"))
        if tier is not None:
            return f"member_tier/tier={min(max(round(tier), 0), MAX_TIER)}"
    key = f"{kind}/category={category}" if isinstance(category, str) and category else kind
    if kind == "consumable_level":
        level = _number(attrs.get("level"))
        if level is not None and len(key) < MAX_KEY - 12:
            key += f"/level={min(max(level, 0.0), 1.0):.2f}"
    return key[:MAX_KEY]


def seconds_of(attrs: Mapping[str, Any]) -> float:
    """`attrs.seconds` when it is a finite non-negative number, else 0 (a NaN stored by an
    older version must never reach the NOT NULL `aggregates.seconds`)."""
    value = _number(attrs.get("seconds"))
    if value is None:
        return 0.0
    return min(max(value, 0.0), 1e6)


def hit(kind: str, attrs: Mapping[str, Any], at: float, window_s: int) -> AggregateHit:
    return AggregateHit(window_label(at, window_s), aggregate_key(kind, attrs), seconds_of(attrs))


def hit_from_row(kind: str, attrs_json: str, at: float, window_s: int) -> AggregateHit:
    """The same, for a raw signal already in the outbox (degrading to aggregates)."""
    try:
        attrs = json.loads(attrs_json)
    except json.JSONDecodeError:
        attrs = {}
    return hit(kind, attrs if isinstance(attrs, dict) else {}, at, window_s)


def merge_hits(hits: Iterable[AggregateHit]) -> dict[tuple[str, str], tuple[int, float]]:
    """Hits summed per (window, key): (count, seconds)."""
    out: dict[tuple[str, str], tuple[int, float]] = {}
    for h in hits:
        count, secs = out.get((h.window, h.key), (0, 0.0))
        out[(h.window, h.key)] = (count + 1, secs + h.seconds)
    return out


def signal_charge(signal_id: str, kind: str, at: str, attrs_json: str) -> int:
    """What one raw signal row costs against the outbox quota, in bytes."""
    content = len(signal_id) + len(kind) + len(at) + len(attrs_json.encode("utf-8"))
    return content + 8 * 4 + ROW_OVERHEAD
