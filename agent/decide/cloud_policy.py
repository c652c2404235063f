"""The cloud's policy documents (issue 18) laid over the firmware profile's decision settings.

Pure. Precedence, lowest first: the firmware profile's `[decisions]`; the document of cohort
`all`; of `profile:<name>`; of every other cohort, in the order the profile lists them. A rule a
document leaves unset (None) keeps the layer below; `quiet_hours = []` clears it. Campaign rules
come from the newest document held (the gateway publishes every document of one change with the
same version, each carrying every campaign rule); they replace the offer and campaign caps and
the holdout share of that campaign's offers, and a campaign's `min_score` replaces the device's
for its offers. A cohort's `holdout` is a floor for every campaign; a cohort's `min_score`
replaces the profile's `decisions.min_score` like any other rule.
The household section (issue 17) is layered the same way, field by field; a household's
coordinator enforces it over the home's devices (`agent.household.state.caps_from`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from agent.decide.rules import (
    NO_FLOOR,
    CapLimits,
    HoldoutRules,
    QuietWindow,
    ScoreFloor,
    parse_hhmm,
)
from protocol.envelopes import HouseholdRules, PolicyDocument, PolicyRules

if TYPE_CHECKING:
    from agent.config import PolicySettings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HouseholdPolicy:
    """The household caps the cloud set (None: not set by any layer; the coordinator's
    defaults apply)."""

    offer_window_s: float | None = None
    per_day: int | None = None
    quiet: tuple[QuietWindow, ...] | None = None


NO_HOUSEHOLD_POLICY = HouseholdPolicy()


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """What the device enforces: caps, quiet hours, holdout, and the policy version (0: the
    profile's settings alone)."""

    limits: CapLimits
    quiet: tuple[QuietWindow, ...]
    holdout: HoldoutRules | None = None
    version: int = 0
    cohorts: tuple[str, ...] = field(default_factory=tuple)
    household: HouseholdPolicy = NO_HOUSEHOLD_POLICY
    floor: ScoreFloor = NO_FLOOR
    """The least model score an offer needs (the profile's `min_score` under the cloud's)."""


def profile_policy(settings: PolicySettings) -> EffectivePolicy:
    """A firmware profile's own `[decisions]` caps and quiet hours (policy version 0)."""
    limits = CapLimits(
        settings.offer_per_day,
        settings.campaign_per_day,
        dict(settings.surface_per_day),
        settings.global_per_day,
    )
    quiet = tuple(QuietWindow(parse_hhmm(q.start), parse_hhmm(q.end)) for q in settings.quiet_hours)
    return EffectivePolicy(limits, quiet, floor=ScoreFloor(settings.min_score))


def layer_order(profile: str, cohorts: Sequence[str]) -> list[str]:
    """The cohorts whose documents apply, from the least to the most specific."""
    mine = f"profile:{profile}"
    first = [c for c in ("all", mine) if c in cohorts]
    return first + [c for c in cohorts if c not in first]


def _quiet(rules: PolicyRules | HouseholdRules) -> tuple[QuietWindow, ...] | None:
    if rules.quiet_hours is None:
        return None
    return tuple(QuietWindow(parse_hhmm(q.start), parse_hhmm(q.end)) for q in rules.quiet_hours)


def merge(
    base: CapLimits,
    base_quiet: tuple[QuietWindow, ...],
    profile: str,
    cohorts: Sequence[str],
    docs: Mapping[str, PolicyDocument],
    *,
    base_min_score: float | None = None,
) -> EffectivePolicy:
    """The policy in force with `docs` (by cohort) held over the profile's `base` settings
    (`base_min_score`: the profile's `decisions.min_score`)."""
    limits, quiet, floor = base, base_quiet, 0.0
    min_score = base_min_score
    household = NO_HOUSEHOLD_POLICY
    applied: list[str] = []
    for cohort in layer_order(profile, cohorts):
        doc = docs.get(cohort)
        if doc is None:
            continue
        applied.append(cohort)
        rules = doc.rules
        limits = replace(
            limits,
            offer_per_day=_pick(rules.offer_per_day, limits.offer_per_day),
            campaign_per_day=_pick(rules.campaign_per_day, limits.campaign_per_day),
            surface_per_day=_pick(rules.surface_per_day, limits.surface_per_day),
            global_per_day=_pick(rules.global_per_day, limits.global_per_day),
        )
        quiet = _pick(_quiet(rules), quiet)
        floor = _pick(rules.holdout, floor)
        min_score = _pick(rules.min_score, min_score)
        if rules.household is not None:
            household = _household(rules.household, household)
    if not applied:
        return EffectivePolicy(base, base_quiet, floor=ScoreFloor(base_min_score))
    newest = max((docs[c] for c in applied), key=lambda d: d.version)
    by_campaign = {
        cid: (r.offer_per_day, r.campaign_per_day)
        for cid, r in newest.campaigns.items()
        if r.offer_per_day is not None or r.campaign_per_day is not None
    }
    shares = {cid: r.holdout for cid, r in newest.campaigns.items() if r.holdout is not None}
    floors = {cid: r.min_score for cid, r in newest.campaigns.items() if r.min_score is not None}
    limits = replace(limits, by_campaign=by_campaign)
    holdout = HoldoutRules(floor, shares) if floor > 0 or shares else None
    return EffectivePolicy(
        limits,
        quiet,
        holdout,
        newest.version,
        tuple(applied),
        household,
        ScoreFloor(min_score, floors),
    )


def _household(rules: HouseholdRules, below: HouseholdPolicy) -> HouseholdPolicy:
    return HouseholdPolicy(
        offer_window_s=_pick(
            None if rules.offer_window_s is None else float(rules.offer_window_s),
            below.offer_window_s,
        ),
        per_day=_pick(rules.per_day, below.per_day),
        quiet=_pick(_quiet(rules), below.quiet),
    )


def _pick(value: T | None, below: T) -> T:
    return below if value is None else value
