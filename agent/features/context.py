"""The `UserContext` a decision reads, and how it is computed from the feature windows' buckets.

`FeatureWindows` (`agent.features.windows`) keeps the hourly buckets; this module turns them into
per-category figures (`key_stats`) and a decision's context (`user_context`), and knows the
device's local time. Bucket keys are `cat:<category>` (signal counts) and `sec.cat:<category>`
(`content_view` seconds), one bucket per hour since the Unix epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.errors import ConfigError
from agent.features.household import HouseholdContext
from protocol.vocabulary import SERVABLE_FEATURE_NAMES

__all__ = [
    "KNOWN_FEATURES",
    "PERSONAL_FEATURES",
    "ContextSource",
    "KeyStats",
    "UserContext",
    "key_stats",
    "local_hour",
    "local_time",
    "user_context",
]

HOUR_S = 3600
WINDOW_24H = 24
WINDOW_7D = 168
COUNT_PREFIX = "cat:"
SECONDS_PREFIX = "sec.cat:"
DECAY_HALF_LIFE_H = 24.0
"""Half-life of the decayed per-category count (`user.category_decayed`)."""
RECENCY_CAP_H = float(WINDOW_7D)
"""Hours since a category was last seen, capped (also the value when never seen in 7 days)."""

KNOWN_FEATURES: frozenset[str] = frozenset(SERVABLE_FEATURE_NAMES)
"""Every feature name this agent can compute (feature spec v1, docs/architecture.md)."""
PERSONAL_FEATURES: frozenset[str] = frozenset(
    n for n in KNOWN_FEATURES if n.startswith(("user.", "household."))
)
"""Every `user.*` and `household.*` feature: computed only with personalization consent, else
the spec default."""

_EMPTY_COUNTS: Mapping[str, int] = MappingProxyType({})
_EMPTY_NEEDS: Mapping[str, float] = MappingProxyType({})
_EMPTY_OWNED: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class KeyStats:
    """Per-category window figures at one moment (cached for a minute or until new signals)."""

    day: Mapping[str, int]
    week: Mapping[str, int]
    hour: Mapping[str, float]
    decayed: Mapping[str, float]
    recency_h: Mapping[str, float]
    seconds_day: Mapping[str, float]
    seconds_week: Mapping[str, float]


_EMPTY_STATS = KeyStats(
    _EMPTY_COUNTS,
    _EMPTY_COUNTS,
    _EMPTY_NEEDS,
    _EMPTY_NEEDS,
    _EMPTY_NEEDS,
    _EMPTY_NEEDS,
    _EMPTY_NEEDS,
)


@dataclass(frozen=True, slots=True)
class UserContext:
    """What a decision knows about the household; personal fields are empty without consent."""

    profile: str
    local_hour: float
    category_24h: Mapping[str, int]
    category_7d: Mapping[str, int]
    consumable_need: Mapping[str, float]
    member_tier: int
    personalized: bool
    local_weekday: int = 0
    """Day of the week in the device's zone, Monday 0 .. Sunday 6."""
    stats: KeyStats = _EMPTY_STATS
    """Per-category 1 h / decayed / recency / duration figures (empty without consent)."""
    owned: frozenset[str] = _EMPTY_OWNED
    """Appliances the household owns (empty without consent)."""
    household: HouseholdContext | None = None
    """The household's shared context from its coordinator (None: no coordinator, no
    household, or no personalization consent: `household.*` features take spec defaults)."""

    def depersonalized(self) -> UserContext:
        """The same context with every personal field at its empty/zero value."""
        if not self.personalized:
            return self
        return UserContext(
            self.profile,
            self.local_hour,
            _EMPTY_COUNTS,
            _EMPTY_COUNTS,
            _EMPTY_NEEDS,
            0,
            False,
            self.local_weekday,
        )


class ContextSource(Protocol):
    """What `user_context` reads of the feature windows (`FeatureWindows` is one)."""

    def stats(self, now: datetime) -> KeyStats: ...
    def needs(self) -> Mapping[str, float]: ...
    def member_tier(self) -> int: ...
    def owned(self) -> frozenset[str]: ...


def local_hour(now: datetime, tz: str) -> float:
    """Hour of day (0 <= h < 24, fractional) at `now` in the IANA time zone `tz`."""
    return local_time(now, tz)[0]


def local_time(now: datetime, tz: str) -> tuple[float, int]:
    """`(hour of day, fractional; weekday, Monday 0)` at `now` in the IANA time zone `tz`."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {tz!r}", field="timezone") from exc
    local = now.astimezone(zone)
    hour = local.hour + local.minute / 60 + (local.second + local.microsecond / 1e6) / 3600
    return hour, local.weekday()


def user_context(
    now: datetime,
    profile: str,
    tz: str,
    source: ContextSource | None,
    household: HouseholdContext | None = None,
) -> UserContext:
    """The decision context at `now`; without a `source` (no personalization consent) every
    personal field stays empty, the `household` context included."""
    hour, weekday = local_time(now, tz)
    if source is None:
        return UserContext(
            profile, hour, _EMPTY_COUNTS, _EMPTY_COUNTS, _EMPTY_NEEDS, 0, False, weekday
        )
    stats = source.stats(now)
    return UserContext(
        profile,
        hour,
        stats.day,
        stats.week,
        source.needs(),
        source.member_tier(),
        True,
        weekday,
        stats,
        source.owned(),
        household,
    )


def key_stats(buckets: Mapping[str, Mapping[int, int]], seconds: int) -> KeyStats:
    """Every per-category window figure at `seconds` (Unix time), from the hourly buckets alone.

    * `day`, `week`: signal counts in the 24 / 168 hourly buckets ending with the current one.
    * `hour`: the last 60 minutes, estimated as the current bucket plus the previous one
      weighted by the part of it still inside the hour (a sliding-window counter).
    * `decayed`: counts weighted by `0.5 ** (age_hours / 24)` over the 7 days kept.
    * `recency_h`: hours since the category's newest bucket started (capped at 168).
    * `seconds_day`, `seconds_week`: `content_view` seconds in the category.
    """
    now_h = seconds // HOUR_S
    frac = (seconds - now_h * HOUR_S) / HOUR_S
    lo24 = now_h - WINDOW_24H
    lo7 = now_h - WINDOW_7D
    day: dict[str, int] = {}
    week: dict[str, int] = {}
    hour: dict[str, float] = {}
    decayed: dict[str, float] = {}
    recency: dict[str, float] = {}
    sec_day: dict[str, float] = {}
    sec_week: dict[str, float] = {}
    cat = len(COUNT_PREFIX)
    sec = len(SECONDS_PREFIX)
    for key, hours in buckets.items():
        is_count = key.startswith(COUNT_PREFIX)
        if not is_count and not key.startswith(SECONDS_PREFIX):
            continue
        s24 = s7 = 0
        s1 = 0.0
        dec = 0.0
        newest = None
        for h, count in sorted(hours.items()):  # a fixed order: float sums reproduce
            if lo7 < h <= now_h:
                s7 += count
                if h > lo24:
                    s24 += count
                if h == now_h:
                    s1 += count
                elif h == now_h - 1:
                    s1 += count * (1.0 - frac)
                if is_count:
                    dec += count * 0.5 ** ((now_h - h) / DECAY_HALF_LIFE_H)
                if newest is None or h > newest:
                    newest = h
        if not s7:
            continue
        if is_count:
            name = key[cat:]
            week[name] = s7
            if s24:
                day[name] = s24
            if s1:
                hour[name] = s1
            decayed[name] = dec
            if newest is not None:
                recency[name] = min(RECENCY_CAP_H, (seconds - newest * HOUR_S) / HOUR_S)
        else:
            name = key[sec:]
            sec_week[name] = float(s7)
            if s24:
                sec_day[name] = float(s24)
    return KeyStats(
        MappingProxyType(day),
        MappingProxyType(week),
        MappingProxyType(hour),
        MappingProxyType(decayed),
        MappingProxyType(recency),
        MappingProxyType(sec_day),
        MappingProxyType(sec_week),
    )
