"""Feature windows: 1 h / 24 h / 7 d, decay, recency and durations on explicit clocks against a
brute force over the raw events; latest-wins state, persistence, caps, future-dated signals."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.features.context import KNOWN_FEATURES, local_hour
from agent.features.windows import STATE_HOUR, FeatureWindows, Row, merge_rows, prune_cutoff
from protocol.vocabulary import FEATURE_NAMES, SERVABLE_FEATURE_NAMES

T0 = datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
H = timedelta(hours=1)
T0_HOUR = int(T0.timestamp()) // 3600


def apply(store: dict[tuple[str, int], int], rows: list[Row]) -> None:
    """What the SQLite store does: additive upsert, rows at 0 deleted."""
    for key, hour, delta in rows:
        total = store.get((key, hour), 0) + delta
        if total:
            store[key, hour] = total
        else:
            store.pop((key, hour), None)


def as_rows(store: dict[tuple[str, int], int]) -> list[Row]:
    return [(k, h, v) for (k, h), v in store.items()]


def test_counts_roll_over_24h_and_7d_with_an_explicit_clock() -> None:
    w = FeatureWindows()
    for at in (T0 - 20 * H, T0 - 1 * H, T0, T0 - 30 * H, T0 - 6 * 24 * H):
        w.observe("content_view", {"category": "tv_streaming", "seconds": 60}, at)
    w.observe("search", {"category": "games", "query_len": 3}, T0 - 3 * 24 * H)

    ctx = w.context(T0, "tv", "UTC", True)
    assert dict(ctx.category_24h) == {"tv_streaming": 3}
    assert dict(ctx.category_7d) == {"tv_streaming": 5, "games": 1}

    later = w.context(T0 + 24 * H, "tv", "UTC", True)  # a day on, nothing new
    assert dict(later.category_24h) == {}
    assert dict(later.category_7d) == {"tv_streaming": 4, "games": 1}

    week_on = w.context(T0 + 7 * 24 * H, "tv", "UTC", True)
    assert dict(week_on.category_7d) == {}


def test_buckets_older_than_seven_days_are_dropped_from_memory() -> None:
    w = FeatureWindows()
    for hour in range(24 * 30):  # a month of hourly signals
        w.observe("app_open", {"app": "x", "category": "music"}, T0 + hour * H)
    buckets = [r for r in w.dump() if r[0] == "cat:music"]
    assert len(buckets) == 169  # 7 days + 1 h
    assert w.context(T0 + (24 * 30 - 1) * H, "tv", "UTC", True).category_7d["music"] == 168
    # a signal older than everything kept is not even persisted
    assert w.observe("app_open", {"category": "music"}, T0) == []


def test_latest_consumable_level_and_tier_win_by_signal_time() -> None:
    w = FeatureWindows()
    w.observe("consumable_level", {"category": "purifier_filter", "level": 0.5}, T0)
    w.observe("consumable_level", {"category": "purifier_filter", "level": 0.08}, T0 + H)
    # a late report of an older reading does not overwrite the newer one
    assert w.observe("consumable_level", {"category": "purifier_filter", "level": 0.9}, T0) == [
        ("cat:purifier_filter", T0_HOUR, 1)
    ]
    w.observe("member_tier", {"tier": 2}, T0)
    w.observe("member_tier", {"tier": 9}, T0 - H)  # older and out of range: ignored
    ctx = w.context(T0 + 2 * H, "hub", "UTC", True)
    assert ctx.consumable_need["purifier_filter"] == pytest.approx(0.92)
    assert ctx.member_tier == 2
    assert FeatureWindows.load(w.dump()).context(T0 + 2 * H, "hub", "UTC", True) == ctx


def test_malformed_attrs_are_ignored() -> None:
    w = FeatureWindows()
    assert w.observe("purchase", {"category": "Bad Category!", "amount": 3}, T0) == []
    assert w.observe("purchase", {"category": 7}, T0) == []
    assert w.observe("consumable_level", {"category": "water_filter", "level": "low"}, T0) == [
        ("~hw", STATE_HOUR, T0_HOUR),
        ("cat:water_filter", T0_HOUR, 1),
    ]
    assert w.observe("member_tier", {"tier": True}, T0) == []
    assert w.context(T0, "tv", "UTC", True).consumable_need == {}


def test_without_personalization_the_context_has_no_personal_data() -> None:
    w = FeatureWindows()
    w.observe("consumable_level", {"category": "purifier_filter", "level": 0.1}, T0)
    w.observe("member_tier", {"tier": 3}, T0)
    ctx = w.context(T0, "tv", "Asia/Shanghai", False)
    assert not ctx.personalized
    assert (dict(ctx.category_24h), dict(ctx.category_7d), dict(ctx.consumable_need)) == (
        {},
        {},
        {},
    )
    assert ctx.member_tier == 0
    assert ctx.local_hour == pytest.approx(20.5)  # 12:30 UTC is 20:30 in Shanghai


def test_local_hour_follows_the_zone_and_rejects_unknown_zones() -> None:
    assert local_hour(datetime(2026, 7, 1, 23, 15, tzinfo=UTC), "Europe/Paris") == pytest.approx(
        1.25
    )
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        local_hour(T0, "Mars/Olympus")


def test_distinct_keys_are_capped_evicting_the_least_recent() -> None:
    w = FeatureWindows(max_keys=5)
    store: dict[tuple[str, int], int] = {}
    for i in range(20):
        apply(store, w.observe("app_open", {"category": f"cat{i:02d}"}, T0 + i * H))
    assert len(w) == 5
    assert set(w.context(T0 + 20 * H, "tv", "UTC", True).category_7d) == {
        f"cat{i:02d}" for i in range(15, 20)
    }
    # eviction rows cancel the evicted keys in the store: it holds exactly the memory
    assert sorted(as_rows(store)) == w.dump()
    # an older newcomer than everything held is the one left out
    assert w.observe("app_open", {"category": "ancient"}, T0) == []


def test_prune_cutoff_keeps_state_rows() -> None:
    w = FeatureWindows()
    rows = w.observe("member_tier", {"tier": 1}, T0)
    cutoff = prune_cutoff(T0 + 30 * 24 * H)
    assert all(hour >= cutoff for _, hour, _ in rows)  # a DELETE ... < cutoff keeps the tier
    assert FeatureWindows.load(rows).member_tier() == 1


def test_known_features_are_the_spec_v1_table_then_appended_ones() -> None:
    assert len(FEATURE_NAMES) == 20
    assert FEATURE_NAMES[19] == "ctx.profile.speaker"  # the v1 table keeps its order
    assert SERVABLE_FEATURE_NAMES[:20] == FEATURE_NAMES
    assert set(SERVABLE_FEATURE_NAMES) == KNOWN_FEATURES
    assert "user.category_decayed" in KNOWN_FEATURES
    assert {"user.consumable_need", "ctx.profile.speaker", "offer.type.group_buy"} <= KNOWN_FEATURES


def test_a_signal_dated_in_the_future_does_not_prune_valid_buckets() -> None:
    w = FeatureWindows()
    old = T0 - 164 * H  # inside the 7 days at T0
    w.observe("app_open", {"category": "games"}, old, now=old)
    # an app with a clock a day fast (intake accepts up to a day ahead)
    rows = w.observe("app_open", {"category": "games"}, T0 + 23 * H, now=T0)
    hours = {hour for key, hour, _ in rows if key == "cat:games"}
    assert hours == {T0_HOUR}  # counted at now + skew (12:35), the current hour
    ctx = w.context(T0, "tv", "UTC", True)
    assert dict(ctx.category_7d) == {"games": 2}
    assert dict(ctx.category_24h) == {"games": 1}
    # without the clamp the same signal would have moved the window a day ahead
    unclamped = FeatureWindows()
    unclamped.observe("app_open", {"category": "games"}, old)
    unclamped.observe("app_open", {"category": "games"}, T0 + 23 * H)
    assert dict(unclamped.context(T0, "tv", "UTC", True).category_7d) == {}


def test_only_servable_keys_are_kept() -> None:
    w = FeatureWindows()
    rows = w.observe(
        "content_view",
        {
            "category": "music",
            "app": "radio",
            "genre": "jazz",
            "appliance": "speaker",
            "seconds": 90,
        },
        T0,
    )
    keys = {key for key, _, _ in rows}
    assert keys == {"~hw", "cat:music", "sec.cat:music", "own:speaker"}
    # rows an older agent persisted for per-app or per-genre counts are skipped on load
    legacy = [*rows, ("app:radio", T0_HOUR, 3), ("genre:jazz", T0_HOUR, 1)]
    assert FeatureWindows.load(legacy) == w


CATS = ["purifier_filter", "games", "music", "tv_streaming"]
events = st.lists(
    st.tuples(
        st.sampled_from(
            ["app_open", "consumable_level", "member_tier", "purchase", "content_view"]
        ),
        st.sampled_from(CATS),
        st.floats(0, 1),
        st.integers(0, 3),
        st.integers(-24 * 12, 24 * 3),  # hours from T0, out of order
        st.integers(0, 3599),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events, st.integers(1, 6))
def test_persisted_rows_load_back_to_the_same_state(
    evs: list[tuple[str, str, float, int, int, int]], max_keys: int
) -> None:
    w = FeatureWindows(max_keys=max_keys)
    log: list[Row] = []
    store: dict[tuple[str, int], int] = {}
    for kind, cat, level, tier, hours, secs in evs:
        at = T0 + hours * H + timedelta(seconds=secs)
        attrs: dict[str, object] = {"category": cat, "level": level, "tier": tier}
        rows = w.observe(kind, attrs, at)
        log.extend(rows)
        apply(store, rows)
    assert FeatureWindows.load(log, max_keys=max_keys) == w  # append-only log, summed
    assert FeatureWindows.load(as_rows(store), max_keys=max_keys) == w  # upserting store
    merged: dict[tuple[str, int], int] = {}
    apply(merged, merge_rows(log))
    assert merged == store  # rows of one (key, hour) summed first: the same upserted state
    assert FeatureWindows.load(w.dump(), max_keys=max_keys) == w  # compaction
    now = T0 + 4 * 24 * H
    loaded = FeatureWindows.load(log, max_keys=max_keys)
    assert loaded.context(now, "tv", "UTC", True) == w.context(now, "tv", "UTC", True)
    assert len(w) <= max_keys


@settings(max_examples=100, deadline=None)
@given(events, st.integers(1, 6), st.integers(1, 20), st.integers(-2, 2))
def test_a_request_observed_at_once_is_the_signals_observed_one_by_one(
    evs: list[tuple[str, str, float, int, int, int]], max_keys: int, per_request: int, skew: int
) -> None:
    one, many = FeatureWindows(max_keys=max_keys), FeatureWindows(max_keys=max_keys)
    now = T0 + skew * H  # some signals dated ahead of it: they count at now + MAX_SKEW_S
    for start in range(0, len(evs), per_request):
        request: list[tuple[str, dict[str, object], datetime | None]] = [
            (
                kind,
                {"category": cat, "level": level, "tier": tier, "seconds": secs},
                None if hours == 0 else T0 + hours * H + timedelta(seconds=secs),
            )
            for kind, cat, level, tier, hours, secs in evs[start : start + per_request]
        ]
        rows: list[Row] = []
        for kind, attrs, at in request:
            rows.extend(one.observe(kind, attrs, at or now, now=now))
        assert many.observe_many(request, now) == merge_rows(rows)
        assert many == one


@settings(max_examples=100, deadline=None)
@given(events, st.integers(0, 24 * 9))
def test_window_counts_equal_a_brute_force_count_of_the_raw_events(
    evs: list[tuple[str, str, float, int, int, int]], later: int
) -> None:
    w = FeatureWindows()
    raw: list[tuple[str, str, datetime, int]] = []
    for kind, cat, level, tier, hours, secs in evs:
        at = T0 + hours * H + timedelta(seconds=secs)
        watched = tier * 500 + secs  # whole seconds of a content_view
        w.observe(kind, {"category": cat, "level": level, "seconds": watched}, at)
        raw.append((kind, cat, at, watched))
    now = T0 + (24 * 3 + later) * H + timedelta(minutes=later % 60)  # after every event
    now_s = int(now.timestamp())
    now_h = now_s // 3600
    frac = (now_s - now_h * 3600) / 3600

    def hour_of(at: datetime) -> int:
        return int(at.timestamp()) // 3600

    def brute(hours: int) -> Counter[str]:
        return Counter(cat for _, cat, at, _ in raw if now_h - hours < hour_of(at) <= now_h)

    def brute_seconds(hours: int) -> dict[str, float]:
        spent: Counter[str] = Counter()
        for kind, cat, at, watched in raw:
            if kind == "content_view" and watched > 0 and now_h - hours < hour_of(at) <= now_h:
                spent[cat] += watched
        return {cat: float(n) for cat, n in spent.items()}

    week = brute(168)
    ctx = w.context(now, "phone", "UTC", True)
    assert dict(ctx.category_24h) == dict(brute(24))
    assert dict(ctx.category_7d) == dict(week)

    # the last hour: the current bucket, plus the previous one weighted by its share still
    # inside the sliding hour
    one_hour = {
        cat: sum(
            1.0 if hour_of(at) == now_h else 1.0 - frac
            for _, c, at, _ in raw
            if c == cat and hour_of(at) in (now_h, now_h - 1)
        )
        for cat in week
    }
    assert dict(ctx.stats.hour) == pytest.approx({c: v for c, v in one_hour.items() if v})
    # decayed: every event in the 7 days, halved per 24 h of its bucket's age
    decayed = {
        cat: sum(
            0.5 ** ((now_h - hour_of(at)) / 24)
            for _, c, at, _ in raw
            if c == cat and now_h - 168 < hour_of(at) <= now_h
        )
        for cat in week
    }
    assert dict(ctx.stats.decayed) == pytest.approx(decayed)
    # recency: hours from the start of the newest bucket to now, capped at 7 days
    recency = {
        cat: min(
            168.0,
            (
                now_s
                - 3600
                * max(
                    hour_of(at)
                    for _, c, at, _ in raw
                    if c == cat and now_h - 168 < hour_of(at) <= now_h
                )
            )
            / 3600,
        )
        for cat in week
    }
    assert dict(ctx.stats.recency_h) == pytest.approx(recency)
    # seconds watched per category over 24 h and 7 d
    assert dict(ctx.stats.seconds_day) == brute_seconds(24)
    assert dict(ctx.stats.seconds_week) == brute_seconds(168)
