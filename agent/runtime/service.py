"""The agent's use cases over its parts: decide, record an outcome, claim, replace the model."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import AgentSettings
from agent.decide.decision import Consent, Decision
from agent.decide.decisions import Decisions
from agent.decide.remote import REMOTE_TIMEOUT_S, RankResult, RemoteRanker
from agent.decide.thin import HeldOffers, rank_request
from agent.errors import ModelRejected, UnknownOffer
from agent.features.household import HouseholdSource
from agent.features.windows import FeatureWindows
from agent.intake.consent import ConsentBox
from agent.intake.validate import parse_outcome
from agent.model.scoring import load_model
from agent.model.slot import ModelSlot
from agent.offers.book import OfferBook
from agent.offers.claims import Claims
from agent.offers.waves import LiveSale
from agent.runtime.metrics import Metrics
from protocol.ids import utcnow

if TYPE_CHECKING:
    from agent.decide.catalog import Catalog

log = logging.getLogger(__name__)


class AgentService:
    """What an app asks of the agent, each use case a few calls on the parts named here."""

    __slots__ = (
        "_claims",
        "_consent",
        "_decisions",
        "_household",
        "_live",
        "_metrics",
        "_offers",
        "_remote",
        "_settings",
        "_slot",
        "_windows",
    )

    def __init__(
        self,
        settings: AgentSettings,
        *,
        metrics: Metrics,
        consent: ConsentBox,
        windows: FeatureWindows,
        slot: ModelSlot,
        offers: OfferBook,
        decisions: Decisions,
        claims: Claims,
        household: HouseholdSource | None = None,
        remote: RemoteRanker | None = None,
        live: LiveSale | None = None,
    ) -> None:
        self._settings = settings
        self._live = live
        self._metrics = metrics
        self._consent = consent
        self._windows = windows
        self._slot = slot
        self._offers = offers
        self._decisions = decisions
        self._claims = claims
        self._household = household
        self._remote = remote

    def use_household(self, source: HouseholdSource | None) -> None:
        """The household context decisions read from now on (the agent joined or left a
        household on the LAN, `agent.household`); None: none."""
        self._household = source

    def use_remote(self, remote: RemoteRanker | None) -> None:
        """Who ranks for this thin device from now on (its household's coordinator, through
        `agent.household.client.HouseholdClient`); None: priority ranking. Only a thin profile
        asks: a full device keeps its own model."""
        if self._settings.profile.ranking == "thin":
            self._remote = remote

    async def decide(self, surface: str, limit: int = 3, *, explain: bool = False) -> Decision:
        """One local ranking decision for `surface` (see `agent.decide.ranking.decide`)."""
        started = time.perf_counter()
        now = utcnow()
        refused = self._claims.refused
        if self._live is not None:
            # offers' windows are judged on the gateway's clock; sealed and sold-out offers
            # of live sales stay off (issue 19)
            now = self._live.now()
            refused = refused | self._live.withheld(self._held().offers, now)
        state = self._consent.state
        consent = Consent(state.analytics, state.personalization, state.marketing)
        profile = self._settings.profile
        household = None
        if consent.personalization and self._household is not None:
            household = self._household.household_context()
        ctx = self._windows.context(
            now, profile.name, profile.timezone, consent.personalization, household
        )
        hold = await self._decisions.household_hold()
        remote = None
        if self._remote is not None and consent.marketing and (hold is None or not hold.reason):
            held = hold.offers if hold is not None else frozenset()
            remote = await self._ask_remote(
                surface, ctx.local_hour, ctx.local_weekday, consent, held | refused
            )
        decision = self._decisions.rank(
            surface,
            limit,
            now,
            model=self._slot.current,
            catalog=self._held(),
            ctx=ctx,
            consent=consent,
            refused=refused,
            explain=explain,
            remote=remote,
            hold=hold,
        )
        self._metrics.inc("decisions")
        self._metrics.observe_decision((time.perf_counter() - started) * 1000.0)
        if decision.counterfactual:
            await self._decisions.log_counterfactual(decision, surface, now)
        return decision

    def _held(self) -> Catalog | HeldOffers:
        """What a decision ranks over: the offer book's columns, or on a thin device (no model,
        no numpy) its offers as they are (`agent.decide.thin`)."""
        if self._settings.profile.ranking == "thin":
            return self._offers.held()
        return self._offers.catalog()

    async def _ask_remote(
        self, surface: str, hour: float, weekday: int, consent: Consent, held: frozenset[str]
    ) -> RankResult | None:
        """The coordinator's scores of the offers showable on `surface` now (not refused, not
        `held` by the household's caps), or None (no coordinator, no answer in time, a failure:
        counted; the decision ranks by priority)."""
        assert self._remote is not None
        request = rank_request(
            self._offers.held().offers,
            device_id=self._settings.device_id,
            profile=self._settings.profile.name,
            surface=surface,
            now=utcnow(),
            local_hour=hour,
            local_weekday=weekday,
            personalized=consent.personalization,
            refused=self._claims.refused | held,
            max_offers=self._settings.profile.budgets.max_candidates,
        )
        if request is None:
            return None
        try:
            result = await asyncio.wait_for(self._remote.rank(request), REMOTE_TIMEOUT_S)
        except (TimeoutError, OSError) as exc:
            self._metrics.inc("remote_rank_failed")
            log.debug("remote ranking failed, ranking by priority: %r", exc)
            return None
        self._metrics.inc("remote_ranked" if result is not None else "remote_rank_offline")
        return result

    async def record_outcome(self, offer_id: str, kind: str, surface: str) -> dict[str, Any]:
        """Store an outcome of a held offer: `{"id", "attributed_to"?}` or `{"id": None,
        "reason"}` (`agent.decide.decisions.Decisions.record`)."""
        checked = parse_outcome({"offer_id": offer_id, "kind": kind, "surface": surface})
        offer = self._offers.get(checked.offer_id)
        if offer is None:
            raise UnknownOffer(checked.offer_id)
        return await self._decisions.record(
            offer, checked.kind, checked.surface, utcnow(), model_version=self._slot.version
        )

    async def claim(self, offer_id: str) -> tuple[dict[str, Any], bool]:
        """Start (or return the one existing) claim of a held limited offer; True when new."""
        return await self._claims.claim(offer_id, utcnow())

    async def replace_model(self, onnx_path: Path, manifest: dict[str, Any]) -> bool:
        """Serve another model; one the agent cannot serve is refused (counted, logged with its
        reason) and the current one stays. True when swapped."""
        try:
            model = await asyncio.to_thread(load_model, onnx_path, manifest)
        except ModelRejected as exc:
            self._metrics.inc("models_rejected")
            self._slot.last_error = exc.reason
            log.warning("%s; keeping model v%s", exc, self._slot.version)
            return False
        self._slot.current = model
        self._metrics.inc("models_loaded")
        return True
