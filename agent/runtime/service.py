"""The agent's use cases over its parts: decide, record an outcome, claim, replace the model."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from agent.config import AgentSettings
from agent.decide.decisions import Decisions
from agent.decide.ranking import Consent, Decision
from agent.errors import ModelRejected, UnknownOffer
from agent.features.windows import FeatureWindows
from agent.intake.consent import ConsentBox
from agent.intake.validate import parse_outcome
from agent.model.scoring import load_model
from agent.model.slot import ModelSlot
from agent.offers.book import OfferBook
from agent.offers.claims import Claims
from agent.runtime.metrics import Metrics
from protocol.ids import utcnow

log = logging.getLogger(__name__)


class AgentService:
    """What an app asks of the agent, each use case a few calls on the parts named here."""

    __slots__ = (
        "_claims",
        "_consent",
        "_decisions",
        "_metrics",
        "_offers",
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
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._consent = consent
        self._windows = windows
        self._slot = slot
        self._offers = offers
        self._decisions = decisions
        self._claims = claims

    async def decide(self, surface: str, limit: int = 3, *, explain: bool = False) -> Decision:
        """One local ranking decision for `surface` (see `agent.decide.ranking.decide`)."""
        started = time.perf_counter()
        now = utcnow()
        state = self._consent.state
        consent = Consent(state.analytics, state.personalization, state.marketing)
        profile = self._settings.profile
        ctx = self._windows.context(now, profile.name, profile.timezone, consent.personalization)
        hold = await self._decisions.household_hold()
        decision = self._decisions.rank(
            surface,
            limit,
            now,
            model=self._slot.current,
            catalog=self._offers.catalog(),
            ctx=ctx,
            consent=consent,
            refused=self._claims.refused,
            explain=explain,
            hold=hold,
        )
        self._metrics.inc("decisions")
        self._metrics.observe_decision((time.perf_counter() - started) * 1000.0)
        if decision.counterfactual:
            await self._decisions.log_counterfactual(decision, surface, now)
        return decision

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
