"""Feature windows: hourly signal buckets kept in memory at intake, persisted as rows, read fast.

The context a decision reads from them is built in `agent.features.context`.

Persistence contract (the store relies on it):

* `FeatureWindows.observe` returns rows `(key, hour_epoch, delta)`. The store must apply them
  **additively**: `count = count + delta` on conflict of `(key, hour_epoch)` (an append-only
  table whose rows are summed on load is equally fine: `load` sums duplicate rows). A row whose
  total reaches 0 may be deleted.
* `hour_epoch` of a windowed row is the hour number since the Unix epoch
  (`int(at.timestamp()) // 3600`), not seconds.
* Keys: `cat:<category>` counts signals whose `attrs.category` is `<category>`, one bucket per
  hour; `sec.cat:<category>` adds up the `attrs.seconds` of `content_view` signals (durations,
  whole seconds). `own:<appliance>` is a state key (below): the household owns that appliance
  (any signal naming it in `attrs.appliance`). Only what a model's spec can ask for is kept
  (`protocol.vocabulary.SERVABLE_FEATURE_NAMES`: offers carry a category, not an app or a
  genre, so per-app and per-genre counts would serve nothing); rows of keys an older agent
  persisted (`app:`, `genre:`, `appl:`, `sec.genre:`) are skipped by `load` and pruned.
  `level:<category>` (latest `consumable_level.level`) and `tier` (latest `member_tier`)
  are *state* keys kept at `hour_epoch == STATE_HOUR`, a constant far in the future so a prune
  `DELETE ... WHERE hour_epoch < prune_cutoff(now)` never removes them. A state value packs the
  observation time and the value, `(unix_seconds << 20) | value` (level scaled by 1e6, tier as
  is), so "latest wins" is simply "largest wins" and the delta is `new - old`. `~hw` (also at
  `STATE_HOUR`) is the newest hour seen: buckets older than `~hw - 168` (7 days + 1 h kept) are
  dropped in memory and ignored by `load`. A signal dated in the future counts at no later
  than `now + MAX_SKEW_S` (`observe(..., now=)`), so one bad clock cannot push `~hw` ahead and
  prune buckets that are still inside the windows.
* At most `max_keys` distinct keys (`~hw` aside). When a new key would pass the cap, the key seen
  least recently (by signal time; ties by name) is evicted and `observe` returns negative rows
  that cancel its buckets, so the persisted rows always sum to exactly the in-memory state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType

from agent.features.context import (
    COUNT_PREFIX,
    HOUR_S,
    SECONDS_PREFIX,
    WINDOW_7D,
    KeyStats,
    UserContext,
    key_stats,
    user_context,
)
from agent.features.household import HouseholdContext

__all__ = ["FeatureWindows", "Row", "merge_rows", "prune_cutoff"]

Row = tuple[str, int, int]
"""`(key, hour_epoch, delta)` as persisted by the store."""

DEFAULT_MAX_KEYS = 1000
STATE_HOUR = 2**31 - 1
LEVEL_SCALE = 1_000_000
AT_SHIFT = 20
MAX_TIER = 3

WINDOW_PREFIXES = (COUNT_PREFIX, SECONDS_PREFIX)
MAX_SKEW_S = 300
"""How far ahead of the device's clock a signal's time may count (clock skew of apps)."""
LEVEL_PREFIX = "level:"
OWN_PREFIX = "own:"
STATE_PREFIXES = (LEVEL_PREFIX, OWN_PREFIX)
MAX_SECONDS = 86_400
TIER_KEY = "tier"
HIGH_WATER_KEY = "~hw"

_CATEGORY_RE = re.compile(r"^[a-z0-9_.:-]{1,64}$")


def _windowed(key: str) -> bool:
    return key.startswith(WINDOW_PREFIXES)


def _state(key: str) -> bool:
    return key == TIER_KEY or key.startswith(STATE_PREFIXES)


def prune_cutoff(now: datetime) -> int:
    """The oldest `hour_epoch` worth keeping at `now`; the store may delete rows below it."""
    return _hour(now) - WINDOW_7D


def merge_rows(rows: Iterable[Row]) -> list[Row]:
    """Rows of one `(key, hour_epoch)` summed into one, in first-seen order: the store applies
    rows additively, so this is the same state in fewer upserts (a request of 100 signals
    yields ~160 rows over a handful of keys)."""
    merged: dict[tuple[str, int], int] = {}
    for key, hour, delta in rows:
        merged[key, hour] = merged.get((key, hour), 0) + delta
    return [(key, hour, delta) for (key, hour), delta in merged.items()]


def _hour(at: datetime) -> int:
    return _seconds(at) // HOUR_S


def _seconds(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("feature windows need timezone-aware times")
    return math.floor(at.timestamp())


def _category(value: object) -> str | None:
    if isinstance(value, str) and _CATEGORY_RE.match(value):
        return value
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _pack(seconds: int, value: int) -> int:
    return (max(seconds, 1) << AT_SHIFT) | value


def _unpack(packed: int) -> tuple[int, int]:
    return packed >> AT_SHIFT, packed & ((1 << AT_SHIFT) - 1)


class FeatureWindows:
    """Hourly per-category counts (24 h / 7 d windows), latest consumable levels and member tier.

    Fed once per accepted signal (`observe`), read once per decision (`context`); nothing is
    recomputed from raw events. Memory is bounded: `max_keys` keys of at most 169 buckets each.
    Not thread-safe: one owner (the agent) calls it.
    """

    __slots__ = (
        "_buckets",
        "_cache",
        "_high",
        "_last",
        "_max_keys",
        "_need_cache",
        "_states",
        "_version",
    )

    def __init__(self, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._buckets: dict[str, dict[int, int]] = {}
        self._states: dict[str, int] = {}
        self._last: dict[str, int] = {}  # key -> last seen, unix seconds (hour start for counts)
        self._high: int | None = None  # newest bucket hour seen
        self._version = 0
        self._cache: tuple[int, int, KeyStats] | None = None
        self._need_cache: tuple[int, Mapping[str, float]] | None = None

    # ------------------------------------------------------------------ intake

    def observe(
        self, kind: str, attrs: Mapping[str, object], at: datetime, *, now: datetime | None = None
    ) -> list[Row]:
        """Account one accepted signal; returns the bucket increments to persist with it.

        With `now`, a time more than `MAX_SKEW_S` ahead of it counts at `now + MAX_SKEW_S`."""
        seconds = _seconds(at)
        if now is not None:
            seconds = min(seconds, _seconds(now) + MAX_SKEW_S)
        rows: list[Row] = []
        self._observe(kind, attrs, seconds, rows)
        return rows

    def observe_many(
        self, signals: Iterable[tuple[str, Mapping[str, object], datetime | None]], now: datetime
    ) -> list[Row]:
        """`observe(kind, attrs, at or now, now=now)` of each signal of one request, the rows
        of one `(key, hour_epoch)` summed (`merge_rows`): the increments to persist with it.
        `now`'s seconds are worked out once (intake is hot)."""
        latest = _seconds(now) + MAX_SKEW_S
        at_now = latest - MAX_SKEW_S
        rows: list[Row] = []
        for kind, attrs, at in signals:
            seconds = at_now if at is None else min(_seconds(at), latest)
            self._observe(kind, attrs, seconds, rows)
        return merge_rows(rows)

    def _observe(
        self, kind: str, attrs: Mapping[str, object], seconds: int, rows: list[Row]
    ) -> None:
        start = len(rows)
        hour = seconds // HOUR_S
        category = _category(attrs.get("category"))
        if category is not None:
            self._count(COUNT_PREFIX + category, hour, rows)
        appliance = _category(attrs.get("appliance"))
        if appliance is not None:
            self._set_state(OWN_PREFIX + appliance, seconds, 1, rows)
        if kind == "content_view":
            duration = _number(attrs.get("seconds"))
            spent = round(min(max(duration, 0.0), MAX_SECONDS)) if duration is not None else 0
            if spent > 0 and category is not None:
                self._count(SECONDS_PREFIX + category, hour, rows, spent)
        if kind == "consumable_level" and category is not None:
            level = _number(attrs.get("level"))
            if level is not None:
                scaled = round(min(max(level, 0.0), 1.0) * LEVEL_SCALE)
                self._set_state(LEVEL_PREFIX + category, seconds, scaled, rows)
        elif kind == "member_tier":
            tier = _number(attrs.get("tier"))
            if tier is not None:
                self._set_state(TIER_KEY, seconds, int(min(max(round(tier), 0), MAX_TIER)), rows)
        if len(rows) > start:
            self._version += 1

    def _count(self, key: str, hour: int, rows: list[Row], amount: int = 1) -> None:
        if self._high is not None and hour < self._high - WINDOW_7D:
            return  # older than anything we keep
        if self._high is None or hour > self._high:
            rows.append((HIGH_WATER_KEY, STATE_HOUR, hour - (self._high or 0)))
            self._high = hour
            self._prune()
        buckets = self._buckets.get(key)
        if buckets is None:
            if not self._make_room(key, hour * HOUR_S, rows):
                return
            buckets = self._buckets[key] = {}
        buckets[hour] = buckets.get(hour, 0) + amount
        rows.append((key, hour, amount))
        self._last[key] = max(self._last.get(key, 0), hour * HOUR_S)

    def _set_state(self, key: str, seconds: int, value: int, rows: list[Row]) -> None:
        packed = _pack(seconds, value)
        old = self._states.get(key)
        if old is not None and packed <= old:
            return  # an older (or equal) observation: latest wins
        if old is None and not self._make_room(key, seconds, rows):
            return
        self._states[key] = packed
        self._last[key] = max(seconds, 1)
        rows.append((key, STATE_HOUR, packed - (old or 0)))

    def _make_room(self, key: str, last: int, rows: list[Row]) -> bool:
        """Admit `key` under the cap, evicting the least recently seen key if needed."""
        if len(self._last) < self._max_keys:
            return True
        victim = min(self._last, key=lambda k: (self._last[k], k))
        if (last, key) < (self._last[victim], victim):
            return False  # the newcomer is the least recent of all: it is the one left out
        self._evict(victim, rows)
        return True

    def _evict(self, key: str, rows: list[Row] | None) -> None:
        del self._last[key]
        buckets = self._buckets.pop(key, None)
        if buckets is not None and rows is not None:
            rows.extend((key, hour, -count) for hour, count in buckets.items())
        packed = self._states.pop(key, None)
        if packed is not None and rows is not None:
            rows.append((key, STATE_HOUR, -packed))

    def _prune(self) -> None:
        if self._high is None:
            return
        oldest = self._high - WINDOW_7D
        for key in list(self._buckets):
            buckets = self._buckets[key]
            if min(buckets) >= oldest:
                continue
            for hour in [h for h in buckets if h < oldest]:
                del buckets[hour]
            if not buckets:
                del self._buckets[key]
                del self._last[key]

    # ------------------------------------------------------------------ persistence

    @classmethod
    def load(cls, rows: Iterable[Row], *, max_keys: int = DEFAULT_MAX_KEYS) -> FeatureWindows:
        """Rebuild the windows from persisted rows (duplicates are summed, unknown keys skipped)."""
        totals: dict[tuple[str, int], int] = {}
        for key, hour, delta in rows:
            totals[key, hour] = totals.get((key, hour), 0) + delta
        windows = cls(max_keys=max_keys)
        high = max(
            (
                hour
                for (key, hour), total in totals.items()
                if _windowed(key) and total > 0 and hour != STATE_HOUR
            ),
            default=totals.get((HIGH_WATER_KEY, STATE_HOUR), 0),
        )
        high = max(high, totals.get((HIGH_WATER_KEY, STATE_HOUR), 0))
        windows._high = high if high > 0 else None
        for (key, hour), total in sorted(totals.items()):
            if total <= 0:
                continue
            if _windowed(key) and hour != STATE_HOUR:
                if hour < high - WINDOW_7D or hour > high:
                    continue
                windows._buckets.setdefault(key, {})[hour] = total
                windows._last[key] = max(windows._last.get(key, 0), hour * HOUR_S)
            elif _state(key) and hour == STATE_HOUR:
                windows._states[key] = total
                windows._last[key] = max(_unpack(total)[0], 1)
        if len(windows._last) > max_keys:
            ranked = sorted(windows._last, key=lambda k: (windows._last[k], k))
            for key in ranked[: len(ranked) - max_keys]:
                windows._evict(key, None)
        return windows

    def reset(self, rows: Iterable[Row] = ()) -> None:
        """Become what `load(rows)` would build, in place: every holder of these windows
        (intake, decisions) sees the change without being handed a new object."""
        fresh = type(self).load(rows, max_keys=self._max_keys)
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))

    def dump(self) -> list[Row]:
        """The whole state as rows, sorted; `load(w.dump())` equals `w` (use it to compact)."""
        rows: list[Row] = []
        if self._high is not None:
            rows.append((HIGH_WATER_KEY, STATE_HOUR, self._high))
        for key, buckets in self._buckets.items():
            rows.extend((key, hour, count) for hour, count in buckets.items())
        rows.extend((key, STATE_HOUR, packed) for key, packed in self._states.items())
        rows.sort()
        return rows

    def __len__(self) -> int:
        """Number of distinct keys held (counts and states)."""
        return len(self._last)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureWindows):
            return NotImplemented
        return self.dump() == other.dump()

    __hash__ = None  # type: ignore[assignment]  # mutable

    # ------------------------------------------------------------------ decisions

    def levels(self) -> dict[str, float]:
        """Latest consumable level (0..1) per category."""
        return {
            key[len(LEVEL_PREFIX) :]: _unpack(packed)[1] / LEVEL_SCALE
            for key, packed in self._states.items()
            if key.startswith(LEVEL_PREFIX)
        }

    def member_tier(self) -> int:
        packed = self._states.get(TIER_KEY)
        return 0 if packed is None else _unpack(packed)[1]

    def owned(self) -> frozenset[str]:
        """Appliances the household owns (named by any signal's `attrs.appliance`)."""
        return frozenset(k[len(OWN_PREFIX) :] for k in self._states if k.startswith(OWN_PREFIX))

    def stats(self, now: datetime) -> KeyStats:
        """Every per-category window figure at `now` (`key_stats`).

        Cached per minute and observation count: a decision never walks buckets twice.
        """
        seconds = _seconds(now)
        minute = seconds // 60
        cache = self._cache
        if cache is not None and cache[0] == minute and cache[1] == self._version:
            return cache[2]
        result = key_stats(self._buckets, seconds)
        self._cache = (minute, self._version, result)
        return result

    def needs(self) -> Mapping[str, float]:
        """`1 - level` per category of the latest consumable levels (cached per observation)."""
        cached = self._need_cache
        if cached is not None and cached[0] == self._version:
            return cached[1]
        need = MappingProxyType({cat: 1.0 - level for cat, level in self.levels().items()})
        self._need_cache = (self._version, need)
        return need

    def context(
        self,
        now: datetime,
        profile: str,
        tz: str,
        personalized: bool,
        household: HouseholdContext | None = None,
    ) -> UserContext:
        """The decision context at `now`; personal fields (the `household` context too) stay
        empty when not `personalized`."""
        if not personalized:
            return user_context(now, profile, tz, None)
        return user_context(now, profile, tz, self, household)
