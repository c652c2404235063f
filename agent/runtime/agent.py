"""The agent daemon: `Agent`, the one object that holds a device's parts (store, model,
feature windows, offers, link, uplink, local API) and the seam apps, the local API and the
simulators call; `run_agent`, the process around it.

Its intake path (signals, consent) is `agent.intake.service`; its start-up, the callbacks the
parts call back into and the background tasks are `agent.runtime.startup`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.api.local import LocalApi
from agent.config import AgentSettings
from agent.decide.decisions import Decisions
from agent.decide.policy import CapCounts, CapLimits, QuietWindow
from agent.decide.ranking import Consent, Decision, RankedOffer
from agent.errors import ModelRejected, ScoringError, UnknownOffer
from agent.features.windows import FeatureWindows
from agent.intake.consent import ConsentState
from agent.intake.service import SignalIntake
from agent.intake.validate import parse_outcome
from agent.link.commands import Commands
from agent.link.session import Link, LinkState
from agent.link.uplink import Uplink
from agent.model.scoring import Model, load_model
from agent.model.update import ModelUpdater
from agent.offers.book import OfferBook
from agent.offers.claims import Claims
from agent.runtime.memory import MemoryBudget, sqlite_cache_kib
from agent.runtime.metrics import Metrics
from agent.runtime.startup import Startup
from agent.runtime.status import accounting_of, gauges_of, status_of
from agent.runtime.tasks import cancel_and_wait
from agent.store.core import Store
from protocol.ids import utcnow

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 2.0


class Agent(SignalIntake, Startup):
    """One device's agent. `async with Agent(settings) as agent:` runs it; exit shuts down.

    Graceful exit: the local API stops taking requests, waiting data is flushed to the
    gateway (bounded wait for acks), the retained state goes `offline`, tasks are cancelled,
    the store is closed. Anything not acknowledged stays in the outbox for the next run.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Callable[[], float] = time.time,
        owns_process: bool = False,
    ) -> None:
        """`owns_process`: this agent is the process (`edgemart agent run`), so the profile's
        memory budget judges the process's resident set; in a simulator or a test runner,
        where one process holds many agents, the resident set is only reported."""
        self.settings = settings
        self.metrics = Metrics(gauges=self._gauges)
        self.memory = MemoryBudget(settings.profile.budgets.memory_mb, shared=not owns_process)
        self.store = Store(
            settings.db_path,
            durability=settings.profile.uplink.durability,
            disk_quota=settings.profile.budgets.outbox_max_bytes,
            cache_kib=sqlite_cache_kib(settings.profile.budgets.memory_mb),
            outbox_full=settings.profile.budgets.outbox_full,
            seen_ids_max=settings.seen_ids_max,
            clock=clock,  # wall clock of the outbox (TTLs, windows, budget days); tests travel
        )
        defaults = settings.profile.consent
        self.consent = ConsentState(
            defaults.analytics, defaults.personalization, defaults.marketing
        )
        self.model: Model | None = None
        self.previous_model: Model | None = None
        """The last good model before the running one: where a run-time failure goes back to."""
        self.windows = FeatureWindows()
        self.offers: OfferBook | None = None
        self.link: Link | None = None
        self.uplink: Uplink | None = None
        self.api: LocalApi | None = None
        self.model_updates: ModelUpdater | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._opened = False
        self.last_model_error: str | None = None
        self.decisions = Decisions(
            settings,
            self.store,
            self.metrics,
            on_outcome=self._outcome_stored,
            on_model_failure=self._model_failed,
        )
        self.claims: Claims | None = None
        self.commands: Commands | None = None

    # ------------------------------------------------------------ public seam

    @property
    def caps(self) -> CapCounts:
        """Today's impression counts the daily caps check (`agent.decide.decisions`)."""
        return self.decisions.caps

    @caps.setter
    def caps(self, caps: CapCounts) -> None:
        self.decisions.caps = caps

    @property
    def cap_limits(self) -> CapLimits:
        return self.decisions.cap_limits

    @cap_limits.setter
    def cap_limits(self, limits: CapLimits) -> None:
        self.decisions.cap_limits = limits

    @property
    def quiet(self) -> tuple[QuietWindow, ...]:
        """The profile's quiet hours (offers held while one is on)."""
        return self.decisions.quiet

    @quiet.setter
    def quiet(self, windows: tuple[QuietWindow, ...]) -> None:
        self.decisions.quiet = windows

    @property
    def counters(self) -> dict[str, int]:
        return self.metrics.counters

    @property
    def decision_ms(self) -> deque[float]:
        return self.metrics.decision_ms

    @property
    def api_port(self) -> int | None:
        return self.api.port if self.api is not None else None

    @property
    def model_version(self) -> int | None:
        return self.model.version if self.model is not None else None

    @property
    def link_state(self) -> str:
        return str(self.link.state if self.link is not None else LinkState.OFFLINE)

    async def decide(self, surface: str, limit: int = 3, *, explain: bool = False) -> Decision:
        """One local ranking decision for `surface` (see `agent.decide.ranking.decide`)."""
        started = time.perf_counter()
        now = utcnow()
        consent = Consent(
            self.consent.analytics, self.consent.personalization, self.consent.marketing
        )
        profile = self.settings.profile
        ctx = self.windows.context(now, profile.name, profile.timezone, consent.personalization)
        decision = self.decisions.rank(
            surface,
            limit,
            now,
            model=self.model,
            catalog=self.offers.catalog() if self.offers is not None else None,
            ctx=ctx,
            consent=consent,
            refused=self.claims.refused if self.claims is not None else frozenset(),
            explain=explain,
        )
        self.metrics.inc("decisions")
        self.metrics.observe_decision((time.perf_counter() - started) * 1000.0)
        if decision.counterfactual:
            await self.decisions.log_counterfactual(decision, surface, now)
        return decision

    def local_day(self, now: datetime) -> int:
        """The device-local day (proleptic ordinal) daily caps count in."""
        return self.decisions.local_day(now)

    async def rank(self, surface: str, limit: int = 3) -> list[RankedOffer]:
        return (await self.decide(surface, limit)).ranked

    async def record_outcome(self, offer_id: str, kind: str, surface: str) -> str:
        """Store an outcome (impression, click, dismiss, conversion) of a held offer; its id.

        It carries the score, model version, variant and features of the last decision that
        returned the offer. A conversion is attributed (`decide.attribution`) to the campaign's
        newest click or impression within the profile's windows and carries that exposure's
        facts; an unattributed one is not reported (`""` is returned, counted).
        """
        result = await self.record_outcome_detail(offer_id, kind, surface)
        return str(result.get("id") or "")

    async def record_outcome_detail(self, offer_id: str, kind: str, surface: str) -> dict[str, Any]:
        """`record_outcome`, answering `{"id", "attributed_to"?}` or `{"id": None, "reason"}`."""
        checked = parse_outcome({"offer_id": offer_id, "kind": kind, "surface": surface})
        offer = self.offers.get(checked.offer_id) if self.offers is not None else None
        if offer is None:
            raise UnknownOffer(checked.offer_id)
        return await self.decisions.record(
            offer, checked.kind, checked.surface, utcnow(), model_version=self.model_version
        )

    async def claim(self, offer_id: str) -> tuple[dict[str, Any], bool]:
        """Start (or return the one existing) claim of a held limited offer; True when new."""
        if self.claims is None:
            raise UnknownOffer(offer_id)
        return await self.claims.claim(offer_id, utcnow())

    async def replace_model(self, onnx_path: Path, manifest: dict[str, Any]) -> bool:
        """Serve another model; one the agent cannot serve is refused (counted, logged with its
        reason) and the current one stays. True when swapped."""
        try:
            model = await asyncio.to_thread(load_model, onnx_path, manifest)
        except ModelRejected as exc:
            self.metrics.inc("models_rejected")
            self.last_model_error = exc.reason
            log.warning("%s; keeping model v%s", exc, self.model_version)
            return False
        self.model = model
        self.metrics.inc("models_loaded")
        return True

    def status(self) -> dict[str, Any]:
        return status_of(self)

    def accounting(self) -> dict[str, Any]:
        """Persisted totals for loss accounting (they survive crashes): signals dropped on
        purpose by reason, signals waiting in aggregates, and today's uplink bytes."""
        return accounting_of(self)

    async def wait_connected(self, timeout: float = 10.0) -> bool:
        """Wait until the MQTT link is up and subscribed; False on timeout."""
        if self.link is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self.link.connected.wait()
        except TimeoutError:
            return False
        return True

    async def drain(self, timeout: float = 10.0) -> bool:  # the seam
        """Wait until every stored signal and outcome is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.store.depth == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            if self.uplink is not None:
                self.uplink.poke(flush=True)
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Agent:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.link is not None and self.uplink is not None and self.link.connected.is_set():
            if not await self.uplink.flush(SHUTDOWN_FLUSH_S):
                log.info("shutting down with %d items unacknowledged", self.store.depth)
            await self.link.say_goodbye()
        if self.model_updates is not None:
            await self.model_updates.close()
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self._opened:
            self._opened = False
            await self.store.close()

    # ------------------------------------------------------------ the running model

    def _swap_model(self, model: Model) -> None:
        """The updater's last step: later decisions use `model` (one reference assignment);
        the one it replaces is kept as the last good model."""
        if self.model is not None:
            self.previous_model = self.model
        self.model = model

    def _model_failed(self, model: Model, error: ScoringError) -> Model | None:
        """A model failed at run time (`Decisions.rank`): go back to the last good model,
        remember and report the failure; the model to rank with now, or None (priority)."""
        if model is not self.model:
            return self.model  # already replaced meanwhile
        good = self.previous_model
        if good is not None and good.version == model.version:
            good = None
        self.model, self.previous_model = good, None
        self.metrics.inc("models_rejected")
        self.last_model_error = str(error)
        if self.model_updates is not None:
            self.model_updates.rolled_back(model, good, str(error))
        return good

    def _gauges(self) -> dict[str, float]:
        return gauges_of(self)


async def run_agent(settings: AgentSettings) -> None:
    """Run one agent until SIGTERM/SIGINT (or cancellation), then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            log.debug("cannot install a handler for %s", sig.name)
    try:
        async with Agent(settings, owns_process=True):
            await stop.wait()
            log.info("stopping on signal")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
