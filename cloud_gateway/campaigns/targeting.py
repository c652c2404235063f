"""Campaign targeting, pure: who a campaign selects, from the facts a device has reported.

A device's facts come from the registry (profile, cohorts such as `region:cn-east`) and from
what the agent reported with consent, in either uplink mode:

- raw signals: `member_tier` (`attrs.tier`), `consumable_level` (`attrs.category`,
  `attrs.level` in 0..1), `purchase` (`attrs.category`);
- aggregates (`agent.intake.aggregates`): `member_tier/tier=<n>`,
  `consumable_level/category=<c>/level=<l>` and `purchase/category=<c>` (count > 0), in
  windows labelled `1h:<YYYY-MM-DDTHH>` or `<n>s:<YYYY-MM-DDTHH:MM:SS>`. The latest window
  wins (then the latest batch, then the lowest level); a purchase counts at its window's end.

A device that reported nothing is unknown, not "no purchase": a rule needs data to hold.
Rules are evaluated at the gateway; a campaign whose targeting is only profiles or only
regions is expressed as cohorts instead, so it costs one publish per cohort, not one per
device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.envelopes import DeviceId, Finite, Name, Profile

MAX_TARGET_DEVICES = 10_000
MAX_RULES = 16
Region = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,55}$")]


class NoPurchaseRule(BaseModel):
    """Selects devices that reported no purchase in `category` during the last `days`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["no_purchase"]
    category: Name
    days: Annotated[int, Field(ge=1, le=365)]


class ConsumableBelowRule(BaseModel):
    """Selects devices whose latest reported level of `category` is below `level` (0..1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["consumable_below"]
    category: Name
    level: Annotated[Finite, Field(gt=0, le=1)]


Rule = Annotated[NoPurchaseRule | ConsumableBelowRule, Field(discriminator="kind")]


class Targeting(BaseModel):
    """Who a campaign selects: every given criterion must hold (empty lists mean anyone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: Annotated[list[Profile], Field(max_length=16)] = Field(default_factory=list)
    regions: Annotated[list[Region], Field(max_length=64)] = Field(default_factory=list)
    member_tiers: Annotated[list[Annotated[int, Field(ge=0, le=3)]], Field(max_length=4)] = Field(
        default_factory=list
    )
    devices: Annotated[list[DeviceId], Field(max_length=MAX_TARGET_DEVICES)] = Field(
        default_factory=list
    )
    rules: Annotated[list[Rule], Field(max_length=MAX_RULES)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Targeting:
        for name in ("profiles", "regions", "member_tiers", "devices"):
            values = getattr(self, name)
            if len(values) != len(set(values)):
                raise ValueError(f"{name} must be unique")
        return self

    @property
    def per_device(self) -> bool:
        """True when only a per-device decision can express it (no cohort does)."""
        return bool(self.member_tiers or self.devices or self.rules) or bool(
            self.profiles and self.regions
        )

    def cohorts(self) -> list[str]:
        """The cohorts equal to this targeting when it is cohort-expressible, else []."""
        if self.per_device:
            return []
        if self.profiles:
            return [f"profile:{p}" for p in self.profiles]
        return [f"region:{r}" for r in self.regions]


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the gateway knows of one device, built from the registry and its reports."""

    device_id: str
    profile: str | None = None
    cohorts: frozenset[str] = frozenset()
    member_tier: int | None = None
    levels: Mapping[str, float] = field(default_factory=dict)
    last_purchase: Mapping[str, datetime] = field(default_factory=dict)
    reported: bool = False
    """True once the device reported any usage (signals or aggregates): rules need data."""

    @property
    def has_data(self) -> bool:
        """Whether the device reported anything a rule can be judged on."""
        return (
            self.reported
            or self.member_tier is not None
            or bool(self.levels)
            or bool(self.last_purchase)
        )

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(c.removeprefix("region:") for c in self.cohorts if c.startswith("region:"))


def rule_holds(
    rule: NoPurchaseRule | ConsumableBelowRule, facts: DeviceFacts, now: datetime
) -> bool:
    if isinstance(rule, NoPurchaseRule):
        if not facts.has_data:
            return False  # no data: unknown, not "bought nothing"
        last = facts.last_purchase.get(rule.category)
        return last is None or last < now - timedelta(days=rule.days)
    level = facts.levels.get(rule.category)
    return level is not None and level < rule.level


def in_audience(cohorts: list[str], facts: DeviceFacts) -> bool:
    """A campaign's `cohorts` bound its audience: the device must be in one of them."""
    return (
        "all" in cohorts
        or bool(facts.cohorts.intersection(cohorts))
        or (facts.profile is not None and f"profile:{facts.profile}" in cohorts)
    )


def selects(
    targeting: Targeting | None, cohorts: list[str], facts: DeviceFacts, now: datetime
) -> bool:
    """True when a campaign with these `cohorts` and `targeting` reaches the device."""
    if not in_audience(cohorts, facts):
        return False
    if targeting is None:
        return True
    if targeting.devices and facts.device_id not in targeting.devices:
        return False
    if targeting.profiles and facts.profile not in targeting.profiles:
        return False
    if targeting.regions and not facts.regions.intersection(targeting.regions):
        return False
    if targeting.member_tiers and facts.member_tier not in targeting.member_tiers:
        return False
    return all(rule_holds(rule, facts, now) for rule in targeting.rules)


def window_bounds(label: str) -> tuple[datetime, datetime] | None:
    """(start, end) of an aggregate window label (`1h:...`, `1d:...`, `<n>s:...`), else None."""
    length, _, start = label.partition(":")
    formats = {"1h": ("%Y-%m-%dT%H", 3600), "1d": ("%Y-%m-%d", 86_400)}
    try:
        if length in formats:
            fmt, seconds = formats[length]
        elif length.endswith("s") and length[:-1].isdigit():
            fmt, seconds = "%Y-%m-%dT%H:%M:%S", int(length[:-1])
        else:
            return None
        begin = datetime.strptime(start, fmt).replace(tzinfo=UTC)
        return begin, begin + timedelta(seconds=seconds)
    except (ValueError, OverflowError):  # a device's label: `1d:9999-12-31` ends past year 9999
        return None


def parse_aggregate_key(key: str) -> tuple[str, dict[str, str]]:
    """`kind/name=value/...` -> (kind, {name: value}); parts without `=` are ignored."""
    kind, *parts = key.split("/")
    fields: dict[str, str] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        if eq:
            fields[name] = value
    return kind, fields
