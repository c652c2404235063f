"""Who a campaign can reach, pure: the surfaces, categories and cohorts devices know (a
campaign naming any other reaches no one, so it is refused with the known values), and the
audience it would reach now among the registered devices."""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

import firmware_profiles
from cloud_gateway.campaigns.model import MAX_COHORTS_PER_CAMPAIGN, Campaign, CampaignIn
from cloud_gateway.campaigns.targeting import DeviceFacts, Targeting, selects
from protocol.assign import in_holdout
from protocol.envelopes import Cohort, Finite, Id
from protocol.vocabulary import CATEGORIES


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The values a device understands: surfaces and cohorts of the shipped firmware profiles
    (plus the cohorts registered devices reported), and the documented offer categories."""

    surfaces: frozenset[str]
    categories: frozenset[str]
    cohorts: frozenset[str]

    def with_cohorts(self, cohorts: Iterable[str]) -> Vocabulary:
        return Vocabulary(self.surfaces, self.categories, self.cohorts | frozenset(cohorts))


@functools.cache
def shipped_vocabulary() -> Vocabulary:
    """From `firmware_profiles/*.toml` (read once; blocking: call it from a thread)."""
    surfaces: set[str] = set()
    cohorts: set[str] = {"all"}
    for name in firmware_profiles.available():
        doc = tomllib.loads(firmware_profiles.profile_path(name).read_text(encoding="utf-8"))
        surfaces.update(doc.get("surfaces", []))
        cohorts.update(doc.get("cohorts", []))
        cohorts.add(f"profile:{name}")
    return Vocabulary(frozenset(surfaces), frozenset(CATEGORIES), frozenset(cohorts))


def _unknown(loc: str, what: str, value: str, known: frozenset[str]) -> dict[str, str]:
    return {"loc": loc, "msg": f"unknown {what} {value!r}; known: {', '.join(sorted(known))}"}


def unknown_audience_values(
    cohorts: Iterable[str], targeting: Targeting | None, vocab: Vocabulary
) -> list[dict[str, str]]:
    """Field errors for the cohorts and targeting-rule categories no device knows."""
    errors = [
        _unknown(f"cohorts.{i}", "cohort", c, vocab.cohorts)
        for i, c in enumerate(cohorts)
        if c not in vocab.cohorts
    ]
    if targeting is not None:
        errors += [
            _unknown(f"targeting.rules.{i}.category", "category", r.category, vocab.categories)
            for i, r in enumerate(targeting.rules)
            if r.category not in vocab.categories
        ]
    return errors


def unreachable_values(spec: CampaignIn, vocab: Vocabulary) -> list[dict[str, str]]:
    """Field errors (`loc`, `msg` listing the known values) for every surface, category and
    cohort no device knows; [] when the campaign names only known ones."""
    errors: list[dict[str, str]] = []
    for i, offer in enumerate(spec.offers):
        errors += [
            _unknown(f"offers.{i}.surfaces.{j}", "surface", s, vocab.surfaces)
            for j, s in enumerate(offer.surfaces)
            if s not in vocab.surfaces
        ]
        if offer.category not in vocab.categories:
            errors.append(
                _unknown(f"offers.{i}.category", "category", offer.category, vocab.categories)
            )
    return (unknown_audience_values(spec.cohorts, spec.targeting, vocab) + errors)[:20]


class Audience(BaseModel):
    """Whom a campaign would reach now: registered devices it selects, of them those held
    out (shown nothing, to measure uplift), and how many devices are registered at all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: int
    held_out: int
    registered: int

    @property
    def reached(self) -> int:
        return self.devices - self.held_out


def audience(campaign: Campaign, facts: Iterable[DeviceFacts], now: datetime) -> Audience:
    return count_audience(
        campaign.targeting, campaign.cohorts, campaign.id, campaign.holdout, facts, now
    )


def count_audience(  # noqa: PLR0917 - the parts of an audience, by position
    targeting: Targeting | None,
    cohorts: list[str],
    key: str,
    holdout: float,
    facts: Iterable[DeviceFacts],
    now: datetime,
) -> Audience:
    """Registered devices `targeting` and `cohorts` select now, and of them those the holdout
    keyed by `key` (a campaign id) keeps out."""
    devices = held = registered = 0
    for f in facts:
        registered += 1
        if selects(targeting, cohorts, f, now):
            devices += 1
            held += in_holdout(f.device_id, key, holdout)
    return Audience(devices=devices, held_out=held, registered=registered)


class AudienceIn(BaseModel):
    """`POST /v1/campaigns/audience` body: a campaign's audience part, to size it before
    creating it (the dashboard asks as the operator types)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cohorts: Annotated[list[Cohort], Field(min_length=1, max_length=MAX_COHORTS_PER_CAMPAIGN)]
    targeting: Targeting | None = None
    holdout: Annotated[Finite, Field(ge=0, le=0.5)] = 0.0
    campaign_id: Id | None = None
    """The campaign being edited: its holdout is counted exactly (it is keyed by the
    campaign's id); without it the holdout count is an estimate for a new campaign."""


PREVIEW_KEY = "audience-preview"


def idle_reason(campaign: Campaign, reach: Audience, delivered: int) -> str | None:
    """Why a live campaign delivered nothing, in the operator's words; None when it did, or
    when it is not live."""
    if campaign.state != "live" or delivered > 0:
        return None
    if reach.registered == 0:
        return "no device has registered with this gateway yet"
    if reach.devices == 0:
        aimed = f"cohorts {', '.join(campaign.cohorts)}"
        if campaign.targeting is not None:
            aimed += " and its targeting"
        return f"none of the {reach.registered} registered devices is in its audience ({aimed})"
    if reach.reached == 0:
        return f"all {reach.devices} devices of its audience are in the holdout"
    return (
        f"{reach.reached} device(s) of its audience have not confirmed its offers yet"
        " (offline, or not connected since the launch)"
    )


class CampaignReach(Campaign):
    """A campaign as `POST /v1/campaigns` and its launch answer it: with its audience now."""

    audience: Audience
