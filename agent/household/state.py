"""The coordinator's household state, pure: consumable levels from appliances, contributions
from consenting devices, exposures for household caps. Every map a peer feeds is bounded;
nothing here is personal beyond category counts, and a device's contribution goes as soon as
it withdraws (or its consent does).

The state is soft: a coordinator that dies loses it, and the members rebuild it in the next
one (devices re-post their contribution and replay today's exposures, appliances re-post
levels). Exposure ids make the replay idempotent: no double count, no lost exposure."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.decide.cloud_policy import HouseholdPolicy
from agent.decide.rules import HouseholdHold, QuietWindow, quiet_remaining
from agent.features.household import HouseholdContext

MAX_DEVICES = 32
MAX_APPLIANCES = 16
MAX_CATEGORIES = 64
MAX_EXPOSURES = 5000
ACTIVE_S = 3600.0
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class HouseholdCaps:
    """The household's caps: the same offer not on two devices within `offer_window_s`, at
    most `per_day` impressions in the home per day, nothing in `quiet` (local time)."""

    offer_window_s: float = 4 * 3600.0
    per_day: int = 24
    quiet: tuple[QuietWindow, ...] = ()
    utc_offset_s: float = 0.0
    """Local time of the household (quiet hours and the day)."""


DEFAULT_CAPS = HouseholdCaps()


def caps_from(policy: HouseholdPolicy, utc_offset_s: float) -> HouseholdCaps:
    """The caps a coordinator enforces: the cloud's household section (`PolicyRules.household`,
    merged over the cohorts' layers) where it sets a rule, the defaults elsewhere; quiet hours
    and the day in the coordinator's local time (`utc_offset_s`)."""
    return HouseholdCaps(
        offer_window_s=(
            DEFAULT_CAPS.offer_window_s
            if policy.offer_window_s is None
            else float(policy.offer_window_s)
        ),
        per_day=DEFAULT_CAPS.per_day if policy.per_day is None else policy.per_day,
        quiet=DEFAULT_CAPS.quiet if policy.quiet is None else policy.quiet,
        utc_offset_s=float(utc_offset_s),
    )


@dataclass(frozen=True, slots=True)
class Exposure:
    """An impression shown on a device, by its outcome id (idempotent)."""

    id: str
    offer_id: str
    campaign_id: str
    device_id: str
    at: float

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "offer_id": self.offer_id,
            "campaign_id": self.campaign_id,
            "device_id": self.device_id,
            "at": self.at,
        }


@dataclass(slots=True)
class Contribution:
    counts: dict[str, int]
    tier: int
    at: float


@dataclass(slots=True)
class HouseholdState:
    household_id: str
    caps: HouseholdCaps = field(default_factory=HouseholdCaps)
    consumables: dict[str, dict[str, float]] = field(default_factory=dict)
    contributions: dict[str, Contribution] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    exposures: OrderedDict[str, Exposure] = field(default_factory=OrderedDict)

    # ------------------------------------------------------------ members

    def touch(self, device_id: str, now: float) -> bool:
        """A member was heard from; False when the member table is full (refused)."""
        if device_id not in self.seen and len(self.seen) >= MAX_DEVICES:
            oldest = min(self.seen, key=self.seen.__getitem__)
            if now - self.seen[oldest] < ACTIVE_S:
                return False
            del self.seen[oldest]
        self.seen[device_id] = now
        return True

    def set_levels(self, appliance_id: str, needs: Mapping[str, float]) -> None:
        """An appliance's consumables: category -> need in [0, 1] (replaces its last post)."""
        if appliance_id not in self.consumables and len(self.consumables) >= MAX_APPLIANCES:
            raise ValueError(f"more than {MAX_APPLIANCES} appliances")
        self.consumables[appliance_id] = {
            k: min(max(float(v), 0.0), 1.0) for k, v in list(needs.items())[:MAX_CATEGORIES]
        }

    def contribute(self, device_id: str, counts: Mapping[str, int], tier: int, now: float) -> None:
        """A consenting device's category counts (24 h) and member tier (replaces its last)."""
        if device_id not in self.contributions and len(self.contributions) >= MAX_DEVICES:
            raise ValueError(f"more than {MAX_DEVICES} contributing devices")
        kept = {k: max(int(v), 0) for k, v in list(counts.items())[:MAX_CATEGORIES]}
        self.contributions[device_id] = Contribution(kept, max(int(tier), 0), now)

    def withdraw(self, device_id: str) -> bool:
        """The device's consent went: its contribution goes with it."""
        return self.contributions.pop(device_id, None) is not None

    def snapshot(self, now: float) -> HouseholdContext:
        needs: dict[str, float] = {}
        for levels in self.consumables.values():
            for category, need in levels.items():
                needs[category] = max(needs.get(category, 0.0), need)
        counts: dict[str, int] = {}
        tier = 0
        for c in self.contributions.values():
            if now - c.at > DAY_S:
                continue
            tier = max(tier, c.tier)
            for category, n in c.counts.items():
                counts[category] = counts.get(category, 0) + n
        active = sum(1 for at in self.seen.values() if now - at <= ACTIVE_S)
        return HouseholdContext(
            household_id=self.household_id,
            consumable_need=needs,
            category_count_24h=counts,
            member_tier=tier,
            active_devices=active,
            as_of=now,
        )

    # ------------------------------------------------------------ caps

    def day(self, at: float) -> int:
        return int((at + self.caps.utc_offset_s) // DAY_S)

    def record(self, exposures: Iterable[Exposure], now: float) -> int:
        """Record exposures (a replay after an outage included); how many were new."""
        added = 0
        for e in exposures:
            if e.id in self.exposures or now - e.at > 2 * DAY_S:
                continue
            self.exposures[e.id] = e
            added += 1
        while len(self.exposures) > MAX_EXPOSURES:
            self.exposures.popitem(last=False)
        return added

    def recent(self, now: float) -> list[Exposure]:
        """Exposures that still count (today, or within the offer window): the log every
        member keeps a copy of, so that a coordinator's death loses none of it."""
        today = self.day(now)
        window = self.caps.offer_window_s
        return [
            e for e in self.exposures.values() if self.day(e.at) == today or now - e.at < window
        ]

    def hold(self, device_id: str, now: float) -> HouseholdHold:
        """What `device_id` may not show now, by the household's caps."""
        local_minute = ((now + self.caps.utc_offset_s) % DAY_S) / 60.0
        remaining = quiet_remaining(local_minute, self.caps.quiet)
        if remaining is not None:
            return HouseholdHold(reason="household_quiet", until=now + remaining * 60.0)
        today = self.day(now)
        shown_today = sum(1 for e in self.exposures.values() if self.day(e.at) == today)
        if shown_today >= self.caps.per_day:
            return HouseholdHold(
                reason="household_day_cap", until=(today + 1) * DAY_S - self.caps.utc_offset_s
            )
        window = self.caps.offer_window_s
        offers = frozenset(
            e.offer_id
            for e in self.exposures.values()
            if e.device_id != device_id and now - e.at < window
        )
        return HouseholdHold(offers=offers)
