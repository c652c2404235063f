"""The agent's decision plumbing: ranking with caps and quiet hours, outcome memory, logging."""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from agent.config import AgentSettings
from agent.decide import attribution
from agent.decide.cloud_policy import (
    NO_HOUSEHOLD_POLICY,
    EffectivePolicy,
    HouseholdPolicy,
    profile_policy,
)
from agent.decide.decision import Consent, Decision, Situation
from agent.decide.explain import ExplainTally, classify
from agent.decide.remote import RankResult
from agent.decide.rules import (
    CapCounts,
    HoldoutRules,
    HouseholdHold,
)
from agent.decide.thin import HeldOffers, decide_offers
from agent.errors import ScoringError
from agent.features.context import UserContext
from agent.runtime.metrics import Metrics
from agent.store import idempotency
from agent.store.core import Store
from agent.store.rows import NewOutcome
from protocol.envelopes import Offer
from protocol.ids import format_time, new_id

if TYPE_CHECKING:
    from agent.decide.catalog import Catalog
    from agent.model.scoring import Model

log = logging.getLogger(__name__)

LAST_DECISIONS = 5000
DECISION_COUNTERS = (
    "counterfactual_impressions",
    "conversions_attributed",
    "conversions_unattributed",
    "models_loaded",
    "models_rejected",
)


class HouseholdCaps(Protocol):
    """The household's caps as a device sees them (`agent.household.client.HouseholdClient`):
    asked before a decision, told of each impression. `hold` answers None when the
    coordinator is away: the device then keeps to its own caps only, and `record_exposure` keeps the
    impression until the coordinator is back (idempotent by id)."""

    async def hold(self) -> HouseholdHold | None: ...

    async def record_exposure(
        self, exposure_id: str, offer_id: str, campaign_id: str, at: float
    ) -> None: ...


class SignedTier(Protocol):
    """The member's tier as the gateway signed it (`agent.offers.members.MemberKeeper`)."""

    def tier_at(self, now: datetime) -> int | None: ...


class Decisions:
    """Daily caps, quiet hours and the memory of recent decisions behind `Agent.decide` and
    `Agent.record_outcome_detail`.

    It ranks with what the agent hands it (model, catalog, feature context, consent), remembers
    each returned offer's score, model version and features so a later outcome carries them,
    logs holdout impressions, and stores outcomes (counting impressions toward caps, attributing
    conversions). `on_outcome` runs after each stored outcome (the agent pokes its uplink).
    `on_model_failure(model, error)` runs when a model fails at run time and answers the model
    to rank with instead (the agent's last good one, `Agent._model_failed`), or None.
    """

    def __init__(
        self,
        settings: AgentSettings,
        store: Store,
        metrics: Metrics,
        *,
        on_outcome: Callable[[], None],
        on_model_failure: Callable[[Model, ScoringError], Model | None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_model_failure = on_model_failure
        self._store = store
        self._metrics = metrics
        self._on_outcome = on_outcome
        for name in DECISION_COUNTERS:
            metrics.counters.setdefault(name, 0)
        self.caps = CapCounts()
        self.household: HouseholdCaps | None = None
        """The household's caps when the device is in one (`attach_household`)."""
        self._last: OrderedDict[str, tuple[float, int | None]] = OrderedDict()
        self._features: OrderedDict[str, tuple[float, ...] | None] = OrderedDict()
        self._counterfactual_at: OrderedDict[tuple[str, str], float] = OrderedDict()
        policy = settings.profile.decisions
        self.base = profile_policy(policy)
        self.cap_limits = self.base.limits
        self.quiet = self.base.quiet
        """The profile's own settings, under any cloud policy (issue 18)."""
        self.floor = self.base.floor
        """The least model scores (`decisions.min_score`, under a cloud policy's)."""
        self.holdout: HoldoutRules | None = None
        self.policy_version = 0
        self.household_policy: HouseholdPolicy = NO_HOUSEHOLD_POLICY
        """The cloud's household caps: what this device applies while it coordinates."""
        self.explanations = ExplainTally()
        """Why each campaign was shown or not, per decision (`agent.decide.explain`)."""
        self.member: SignedTier | None = None
        """The member's signed tier (issue 19, `agent.offers.members`): when it holds one,
        ranking uses it instead of the `member_tier` the device observed about itself."""

    def apply_policy(self, policy: EffectivePolicy) -> None:
        """Enforce a cloud policy merged over the profile (`agent.decide.cloud_policy`)."""
        self.cap_limits = policy.limits
        self.quiet = policy.quiet
        self.holdout = policy.holdout
        self.policy_version = policy.version
        self.household_policy = policy.household
        self.floor = policy.floor

    def forget(self, now: datetime) -> None:
        """After an erasure: no remembered decision, no impression counted today."""
        self._last.clear()
        self._features.clear()
        self._counterfactual_at.clear()
        self.caps = CapCounts.load([], self.local_day(now))
        self.explanations.drain()  # counts of the erased decisions are not reported

    def local_day(self, now: datetime) -> int:
        """The device-local day (proleptic ordinal) daily caps count in."""
        return now.astimezone(self._settings.tz).date().toordinal()

    async def household_hold(self) -> HouseholdHold | None:
        """What the household's caps hold back now (None: not in a household, or away)."""
        return None if self.household is None else await self.household.hold()

    def rank(
        self,
        surface: str,
        limit: int,
        now: datetime,
        *,
        model: Model | None,
        catalog: Catalog | HeldOffers | None,
        ctx: UserContext,
        consent: Consent,
        refused: frozenset[str],
        explain: bool,
        remote: RankResult | None = None,
        hold: HouseholdHold | None = None,
    ) -> Decision:
        """One ranking (`agent.decide.ranking`), remembered. When the model fails at run time, with
        the last good model `on_model_failure` answers, else without a model (priority).
        `hold`: what the household's caps keep off (`household_hold`), on top of this device's."""
        self.caps.roll(self.local_day(now))
        if self.member is not None and ctx.personalized:
            signed = self.member.tier_at(now)
            if signed is not None and signed != ctx.member_tier:
                ctx = dataclasses.replace(ctx, member_tier=signed)
        situation = Situation(
            self._settings.device_id,
            self.caps,
            self.cap_limits,
            self.quiet,
            refused,
            household_held=hold.offers if hold is not None else frozenset(),
            holdout=self.holdout,
            min_score=self.floor.default,
            campaign_min_score=self.floor.by_campaign,
        )
        if hold is not None and hold.reason is not None:
            self._explain_household_hold(catalog, ctx, surface, limit, now, consent, situation)
            until = datetime.fromtimestamp(hold.until, now.tzinfo) if hold.until else None
            version = model.version if model is not None else None
            return Decision([], [("*", hold.reason)], version, held_until=until)
        tried: set[int] = set()
        while True:
            try:
                decision = self._rank_with(
                    model,
                    catalog,
                    ctx,
                    surface,
                    limit=limit,
                    now=now,
                    consent=consent,
                    explain=explain,
                    situation=situation,
                    remote=remote,
                )
                break
            except ScoringError as exc:
                if model is None:  # only a model raises ScoringError
                    raise
                tried.add(id(model))
                fallback = None
                if self._on_model_failure is not None:
                    fallback = self._on_model_failure(model, exc)
                if fallback is not None and id(fallback) not in tried:
                    model = fallback
                    continue
                log.error("model failed, ranking without it: %s", exc)  # noqa: TRY400
                model = None
        if catalog is not None and len(catalog):
            self.explanations.add(catalog.campaigns, classify(decision, catalog))
        for ranked in decision.ranked:
            self._last[ranked.offer.id] = (ranked.score, decision.model_version)
            self._last.move_to_end(ranked.offer.id)
            self._features[ranked.offer.id] = ranked.features
            self._features.move_to_end(ranked.offer.id)
        while len(self._last) > LAST_DECISIONS:
            self._last.popitem(last=False)
        while len(self._features) > LAST_DECISIONS:
            self._features.popitem(last=False)
        return decision

    def _explain_household_hold(  # noqa: PLR0917
        self,
        catalog: Catalog | HeldOffers | None,
        ctx: UserContext,
        surface: str,
        limit: int,
        now: datetime,
        consent: Consent,
        situation: Situation,
    ) -> None:
        """The household's quiet hours or day cap hold every offer back: the campaigns whose
        offers could have been shown are counted as `household_cap` (the others by what
        filtered them first), so the marketer sees the household's caps (issue 18)."""
        if catalog is None or not len(catalog):
            return
        everything = dataclasses.replace(
            situation, household_held=frozenset(o.id for o in catalog.offers)
        )
        probe = self._rank_with(
            None,
            catalog,
            ctx,
            surface,
            limit=limit,
            now=now,
            consent=consent,
            explain=False,
            situation=everything,
        )
        self.explanations.add(catalog.campaigns, classify(probe, catalog))

    def _rank_with(
        self,
        model: Model | None,
        catalog: Catalog | HeldOffers | None,
        ctx: UserContext,
        surface: str,
        *,
        limit: int,
        now: datetime,
        consent: Consent,
        explain: bool,
        situation: Situation,
        remote: RankResult | None = None,
    ) -> Decision:
        budget = self._settings.profile.budgets.max_candidates
        if isinstance(catalog, HeldOffers):  # a thin device: no model, no numpy
            return decide_offers(
                catalog.offers,
                ctx,
                surface,
                limit,
                now,
                consent,
                explain,
                max_candidates=budget,
                situation=situation,
                reasons_always=True,
                remote=remote,
            )
        from agent.decide.ranking import decide, decide_catalog  # noqa: PLC0415 - numpy

        if catalog is None:
            return decide(model, [], ctx, surface, limit, now, consent, explain)
        return decide_catalog(
            model,
            catalog,
            ctx,
            surface,
            limit,
            now,
            consent,
            explain,
            max_candidates=budget,
            situation=situation,
            reasons_always=True,  # every campaign's reason, for the explanations
            remote=remote,
        )

    async def log_counterfactual(self, decision: Decision, surface: str, now: datetime) -> None:
        """A holdout kept these offers off: log the impression they would have made (once per
        offer and surface per `counterfactual_gap_s`); it counts toward caps like a real one."""
        gap = self._settings.profile.decisions.counterfactual_gap_s
        moment = now.timestamp()
        for held in decision.counterfactual:
            key = (held.offer.id, surface)
            last = self._counterfactual_at.get(key)
            if last is not None and moment - last < gap:
                continue
            self._counterfactual_at[key] = moment
            self._counterfactual_at.move_to_end(key)
            while len(self._counterfactual_at) > LAST_DECISIONS:
                self._counterfactual_at.popitem(last=False)
            await self._store_outcome(
                held.offer,
                "impression",
                surface,
                now,
                score=held.score,
                version=decision.model_version,
                features=held.features,
                counterfactual=True,
            )
            self._metrics.inc("counterfactual_impressions")

    async def record(
        self, offer: Offer, kind: str, surface: str, now: datetime, *, model_version: int | None
    ) -> dict[str, Any]:
        """Store a checked outcome of a held offer: `{"id", "attributed_to"?}`, or
        `{"id": None, "reason"}` for a conversion no exposure explains (`agent.decide.attribution`).
        `model_version` is the one serving, for an offer no remembered decision returned."""
        score, version = self._last.get(offer.id, (None, model_version))
        features = self._features.get(offer.id)
        counterfactual = False
        variant = offer.variant
        body: dict[str, Any] = {}
        if kind == "conversion":
            policy = self._settings.profile.decisions
            exposure = await attribution.attribute(
                self._store, policy, offer.campaign_id, now.timestamp()
            )
            if exposure is None:
                self._metrics.inc("conversions_unattributed")
                return {"id": None, "reason": attribution.explain_miss(policy, offer.campaign_id)}
            score, version, features = exposure.score, exposure.model_version, exposure.features
            counterfactual, variant = exposure.counterfactual, exposure.variant
            body["attributed_to"] = {"id": exposure.outcome_id, "kind": exposure.kind}
            self._metrics.inc("conversions_attributed")
        body["id"] = new_id()
        idempotency.answer_with(202, body)  # committed with the outcome when keyed
        await self._store_outcome(
            offer,
            kind,
            surface,
            now,
            score=score,
            version=version,
            features=features,
            counterfactual=counterfactual,
            variant=variant,
            outcome_id=body["id"],
        )
        return body

    async def _store_outcome(
        self,
        offer: Offer,
        kind: str,
        surface: str,
        now: datetime,
        *,
        score: float | None,
        version: int | None,
        features: tuple[float, ...] | None,
        counterfactual: bool,
        variant: str | None = None,
        outcome_id: str | None = None,
    ) -> str:
        outcome = NewOutcome(
            id=outcome_id or new_id(),
            offer_id=offer.id,
            campaign_id=offer.campaign_id,
            variant=variant or offer.variant,
            kind=kind,
            at=format_time(now),
            surface=surface,
            score=score,
            model_version=version,
        )
        cap_rows: list[tuple[str, str, int]] = []
        if kind == "impression":
            self.caps.add(offer.id, offer.campaign_id, surface, self.local_day(now))
            cap_rows = self.caps.rows(offer.id, offer.campaign_id, surface)
        await self._store.call(
            self._store.decisions.record_outcome,
            outcome,
            features=features,
            counterfactual=counterfactual,
            cap_rows=cap_rows,
            exposure=kind in ("impression", "click"),
        )
        self._metrics.inc("outcomes_recorded")
        self._on_outcome()
        if kind == "impression" and not counterfactual and self.household is not None:
            # the household knows before the next device decides (or later, when it is back)
            await self.household.record_exposure(
                outcome.id, offer.id, offer.campaign_id, now.timestamp()
            )
        return outcome.id
