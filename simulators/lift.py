"""Measured lift in a simulated fleet (issue 18): the real agent's decisions under three rankings.

For one seeded world (households, their devices, the offers), every device's signals go into
the agent's real feature windows (`agent.features.windows`), and at each of its sessions the
agent's real decision path runs: `agent.decide.ranking.decide_catalog` (a thin speaker:
`agent.decide.thin.decide_offers` on the scores its household coordinator's model gives,
`agent.decide.remote_rank.rank_for`) under its firmware profile's policy (quiet hours, daily
caps, the campaign holdout) and the onnxruntime model of `agent.model.scoring`. The arms:

* `broadcast`: no model, every eligible offer shown in priority order as the caps allow;
* `ranked`: the shipped default model without a minimum score (the same slots as broadcast,
  filled by score: what the ranking alone brings);
* `shipped`: the shipped default model, with the `decisions.min_score` rule;
* `retrained`: boosted trees trained by `models.train` on the impressions the `shipped` arm
  logged (features as the agent logged them, clicks as the world drew them), same rule.

Outcomes come from the world's hidden truth (`World.outcome_probabilities`), drawn with
uniforms keyed by (seed, household, device, session, offer): the same impression in two arms
meets the same luck, and the same seed gives the same figures. The arms share the event
stream (signals, sessions, surfaces); only what the agent decides differs.
"""

from __future__ import annotations

import json
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

import firmware_profiles
from agent.config import Profile
from agent.decide.catalog import Catalog, build_catalog
from agent.decide.cloud_policy import profile_policy
from agent.decide.decision import Consent, Decision, Situation
from agent.decide.ranking import decide_catalog
from agent.decide.remote_rank import rank_for
from agent.decide.rules import CapCounts, CapLimits, QuietWindow
from agent.decide.thin import decide_offers, rank_request
from agent.features.context import UserContext
from agent.features.household import HouseholdContext
from agent.features.windows import FeatureWindows
from agent.model.scoring import Model, load_default_model, load_model
from models.errors import ModelError
from models.gbdt import GbdtParams
from models.train import train
from protocol.envelopes import Offer
from protocol.vocabulary import PROFILES
from simulators.lift_report import ArmTally, LiftReport, outcomes, report
from simulators.options import LiftOptions
from simulators.world import LOG_START, UTC_OFFSET_HOURS, World, make_world, usage_signals
from simulators.world.usage import daily_signal_rate, local_minutes

ARMS = ("broadcast", "ranked", "shipped", "retrained")
WARMUP_DAYS = 7
"""Days of signals before the first session: the feature windows' full week."""
_ALL = Consent(analytics=True, personalization=True, marketing=True)
_PROFILE_INDEX = {p: i for i, p in enumerate(PROFILES)}


class LiftError(Exception):
    """A lift run that cannot go on (the message says what and why)."""


@dataclass(frozen=True, slots=True)
class _Policy:
    """A profile's decision settings as the agent enforces them (`agent.decide.decisions`)."""

    profile: Profile
    limits: CapLimits
    quiet: tuple[QuietWindow, ...]

    @classmethod
    def of(cls, name: str) -> _Policy:
        with firmware_profiles.profile_path(name).open("rb") as handle:
            profile = Profile.model_validate(tomllib.load(handle))
        base = profile_policy(profile.decisions)
        return cls(profile, base.limits, base.quiet)


@dataclass(frozen=True, slots=True)
class _Arm:
    name: str
    model: Model | None
    min_score: float | None


@dataclass(slots=True)
class _Log:
    """What one arm showed or held out, as aligned lists, and the shipped arm's training rows."""

    shown: ArmTally = field(default_factory=ArmTally)
    held: ArmTally = field(default_factory=ArmTally)
    decisions: int = 0
    training: list[dict[str, Any] | None] = field(default_factory=list)
    """The shipped arm's shown offers as export rows (None: no features logged), aligned
    with `shown`."""


def run_lift(options: LiftOptions) -> LiftReport:
    """The four arms (`ARMS`) on one world; the retrained model is written under `work_dir`."""
    world = make_world(options.seed, options.households, options.offers)
    start = _utc(LOG_START) + timedelta(days=WARMUP_DAYS)
    offers = _offers(world, start, options)
    catalog = build_catalog(offers, 1)
    policies = {p: _Policy.of(p) for p in PROFILES}
    shipped = load_default_model()
    first = _simulate(
        world,
        offers,
        catalog,
        policies,
        [
            _Arm("broadcast", None, None),
            _Arm("ranked", shipped, None),
            _Arm("shipped", shipped, options.min_score),
        ],
        start,
        options,
    )
    with tempfile.TemporaryDirectory(prefix="edgemart-lift-") as scratch:
        folder = options.work_dir or Path(scratch)
        rows = _labelled(world, first["shipped"], options.seed)
        retrained = _retrain(rows, folder, options.seed)
        second = _simulate(
            world,
            offers,
            catalog,
            policies,
            [_Arm("retrained", retrained, options.min_score)],
            start,
            options,
        )
    logs = {**first, **second}
    devices = int(world.households.devices.sum())
    return report(
        world,
        {name: (logs[name].shown, logs[name].held, logs[name].decisions) for name in ARMS},
        seed=options.seed,
        device_days=devices * options.days,
        settings={
            "households": options.households,
            "devices": devices,
            "days": options.days,
            "sessions_per_day": options.sessions_per_day,
            "min_score": options.min_score,
            "holdout": options.holdout,
            "offers": options.offers,
            "slots": options.slots,
            "retrained_on": len(rows),
        },
    )


def _utc(local: np.datetime64) -> datetime:
    """A local (UTC+8) numpy time as an aware UTC datetime."""
    seconds = (local - np.datetime64(0, "s")).astype("timedelta64[s]").astype(np.int64)
    return datetime.fromtimestamp(int(seconds) - UTC_OFFSET_HOURS * 3600, UTC)


def _offers(world: World, start: datetime, options: LiftOptions) -> list[Offer]:
    """The world's catalog as offers on every surface of the shipped profiles, valid for the
    run, each campaign holding `holdout` of the devices out."""
    surfaces = sorted({s for p in PROFILES for s in _Policy.of(p).profile.surfaces})
    end = start + timedelta(days=options.days + 1)
    return [
        Offer.model_validate(
            {
                **record,
                "surfaces": surfaces,
                "starts_at": start - timedelta(days=1),
                "expires_at": end,
                "holdout": options.holdout,
            }
        )
        for record in world.catalog.records()
    ]


def _simulate(  # noqa: PLR0917 - the run's parts, passed as they are
    world: World,
    offers: Sequence[Offer],
    catalog: Catalog,
    policies: Mapping[str, _Policy],
    arms: Sequence[_Arm],
    start: datetime,
    options: LiftOptions,
) -> dict[str, _Log]:
    logs = {arm.name: _Log() for arm in arms}
    for h in range(len(world.households)):
        _household(world, h, offers, catalog, policies, arms, start, options, logs)
    return logs


def _household(  # noqa: PLR0917 - one household's run, all of it
    world: World,
    h: int,
    offers: Sequence[Offer],
    catalog: Catalog,
    policies: Mapping[str, _Policy],
    arms: Sequence[_Arm],
    start: datetime,
    options: LiftOptions,
    logs: Mapping[str, _Log],
) -> None:
    """Every device of household `h`, events in time order: signals into its windows, and at
    each session one decision per arm."""
    persona = world.persona(h)
    rng = np.random.default_rng([options.seed, h, 0x11F7])
    events: list[tuple[float, int, int, Any]] = []  # (minutes from start, device, order, what)
    for d, profile in enumerate(persona.devices):
        rate = daily_signal_rate(persona, profile)
        n = int(rng.poisson(rate * (WARMUP_DAYS + options.days)))
        at = local_minutes(
            rng, persona.peak_hour, persona.hour_spread, n, -WARMUP_DAYS, options.days
        )
        for t, signal in zip(at.tolist(), usage_signals(persona, profile, rng, n), strict=True):
            events.append((t, d, 0, signal))
        k = int(rng.poisson(options.sessions_per_day * options.days))
        surfaces = policies[profile].profile.surfaces
        picks = rng.integers(0, len(surfaces), k).tolist()
        at = local_minutes(rng, persona.peak_hour, persona.hour_spread, k, 0, options.days)
        for s, (t, pick) in enumerate(zip(sorted(at.tolist()), picks, strict=True)):
            events.append((t, d, 1, (s, surfaces[pick])))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    windows = [FeatureWindows() for _ in persona.devices]
    caps = {(arm.name, d): CapCounts() for arm in arms for d in range(len(persona.devices))}
    logged_at: dict[tuple[str, int, str, str], float] = {}  # the agent's counterfactual gap
    need = {c: 1.0 - round(level, 2) for c, level in persona.consumables.items()}
    tier = persona.tier if persona.knows_tier else 0
    local_start = start.astimezone(ZoneInfo(policies[PROFILES[0]].profile.timezone))
    base_day = local_start.date().toordinal()
    for t, d, what, payload in events:
        now = start + timedelta(minutes=t)
        if what == 0:
            windows[d].observe(payload["kind"], payload["attrs"], now)
            continue
        session, surface = payload
        profile = persona.devices[d]
        policy = policies[profile]
        counts: dict[str, int] = {}
        for w in windows:
            for category, c in w.stats(now).day.items():
                counts[category] = counts.get(category, 0) + c
        home = HouseholdContext(
            persona.household_id, need, counts, tier, len(persona.devices), now.timestamp()
        )
        tz = policy.profile.timezone
        ctx = windows[d].context(now, profile, tz, True, home)
        day = base_day + int(t // 1440)  # the device-local day caps count in
        key = (h, d, session)
        for arm in arms:
            counter = caps[(arm.name, d)]
            counter.roll(day)
            sit = Situation(
                persona.device_id(profile),
                counter,
                policy.limits,
                policy.quiet,
                holdout=None,
                min_score=arm.min_score,
            )
            decision = _decide(arm, policy, offers, catalog, ctx, surface, now, sit, home, options)
            log = logs[arm.name]
            log.decisions += 1
            p = _PROFILE_INDEX[profile]
            for ranked in decision.ranked:
                o = ranked.offer
                counter.add(o.id, o.campaign_id, surface, day)
                log.shown.add(key, world.catalog.index(o.id), ctx.local_hour, p)
            gap = policy.profile.decisions.counterfactual_gap_s
            for ranked in decision.counterfactual:  # as `Decisions.log_counterfactual` logs them
                o = ranked.offer
                last = logged_at.get((arm.name, d, o.id, surface))
                if last is not None and now.timestamp() - last < gap:
                    continue
                logged_at[(arm.name, d, o.id, surface)] = now.timestamp()
                counter.add(o.id, o.campaign_id, surface, day)  # counts toward caps too
                log.held.add(key, world.catalog.index(o.id), ctx.local_hour, p)
            if arm.name == "shipped" and arm.model is not None:
                device_id = persona.device_id(profile)
                log.training.extend(_rows(arm.model, decision, device_id, profile, now))


def _decide(  # noqa: PLR0917 - one decision with everything it reads
    arm: _Arm,
    policy: _Policy,
    offers: Sequence[Offer],
    catalog: Catalog,
    ctx: UserContext,
    surface: str,
    now: datetime,
    sit: Situation,
    home: HouseholdContext,
    options: LiftOptions,
) -> Decision:
    """The agent's own path: a thin device asks its coordinator's model for scores."""
    if policy.profile.ranking == "thin":
        remote = None
        if arm.model is not None:
            request = rank_request(
                offers,
                device_id=sit.device_id,
                profile=policy.profile.name,
                surface=surface,
                now=now,
                local_hour=ctx.local_hour,
                local_weekday=ctx.local_weekday,
                personalized=True,
            )
            remote = rank_for(arm.model, request, home) if request is not None else None
        return decide_offers(
            offers, ctx, surface, options.slots, now, _ALL, situation=sit, remote=remote
        )
    return decide_catalog(arm.model, catalog, ctx, surface, options.slots, now, _ALL, situation=sit)


def _rows(
    model: Model, decision: Decision, device_id: str, profile: str, now: datetime
) -> list[dict[str, Any] | None]:
    """The shown offers as the gateway exports them (`models.logs`), the agent's logged
    (scaled) inputs turned back into raw feature values; the label is filled in later."""
    spec = model.spec
    out: list[dict[str, Any] | None] = []
    for ranked in decision.ranked:
        if ranked.features is None:
            out.append(None)
            continue
        raw = {
            f.name: round(v * f.scale + f.mean, 6)
            for f, v in zip(spec.features, ranked.features, strict=True)
        }
        out.append(
            {
                "device_id": device_id,
                "profile": profile,
                "offer_id": ranked.offer.id,
                "campaign_id": ranked.offer.campaign_id,
                "features": raw,
                "kind": "impression",
                "at": now.isoformat().replace("+00:00", "Z"),
            }
        )
    return out


def _labelled(world: World, log: _Log, seed: int) -> list[dict[str, Any]]:
    """The shipped arm's export rows, each labelled with what the world drew for it."""
    clicked = outcomes(world, log.shown, seed)[0].tolist()
    return [
        {**row, "kind": "click" if click else "impression"}
        for row, click in zip(log.training, clicked, strict=True)
        if row is not None
    ]


def _retrain(rows: list[dict[str, Any]], folder: Path, seed: int) -> Model:
    """Boosted trees (the shipped family and settings) trained by `models.train` on the
    shipped arm's logs, written to `folder` and loaded as the agent loads a model."""
    folder.mkdir(parents=True, exist_ok=True)
    logs = folder / "shipped-arm-logs.jsonl"
    logs.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    out = folder / "retrained"
    try:
        result = train(
            logs, out, spec_version=2, family="gbdt", gbdt=GbdtParams(seed=seed), version=2
        )
    except ModelError as exc:
        raise LiftError(
            f"cannot retrain on the shipped arm's {len(rows)} logged impressions: {exc}"
        ) from exc
    manifest = json.loads(result.manifest_path.read_text())
    return load_model(result.model_path, manifest)
