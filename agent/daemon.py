"""The agent daemon: wires store, model, feature windows, offers, link, uplink and local API."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from agent import AGENT_VERSION, attribution
from agent.aggregates import hit as aggregate_hit
from agent.api import LocalApi
from agent.claims import Claims
from agent.commands import Commands
from agent.config import AgentSettings
from agent.consent import ConsentState, parse_purposes
from agent.decisions import Decisions
from agent.errors import (
    ConfigError,
    LinkDown,
    ModelRejected,
    QuotaExceeded,
    ScoringError,
    UnknownOffer,
)
from agent.features import FeatureWindows, prune_cutoff
from agent.intake import SignalIn, parse_outcome, parse_signal_list, signal_rows
from agent.link import Incoming, Link, LinkState
from agent.memory import MemoryBudget, rss_bytes, sqlite_cache_kib, trim_heap
from agent.metrics import Metrics
from agent.model_update import ModelUpdater, UpdateConfig, load_kept
from agent.offers import OfferBook, load_trust
from agent.policy import CapCounts, CapLimits, QuietWindow
from agent.ranking import Consent, Decision, RankedOffer
from agent.scoring import Model, load_default_model, load_model
from agent.status import accounting_of, gauges_of, status_of
from agent.store import Store
from agent.tasks import cancel_and_wait
from agent.uplink import Uplink
from protocol import codec
from protocol.envelopes import State
from protocol.errors import ProtocolError
from protocol.ids import format_time, utcnow
from protocol.signing import Verifier
from protocol.topics import DEFAULT_ROOT

log = logging.getLogger(__name__)

MAINTENANCE_S = 60.0
MEMORY_SAMPLE_S = 10.0
SHUTDOWN_FLUSH_S = 2.0


class Agent:
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
        """Today's impression counts the daily caps check (`agent.decisions`)."""
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

    async def accept_signals(self, signals: list[dict[str, Any]]) -> list[str]:
        """Validate and store signals; returns their ids once COMMITTED.

        Raises InvalidInput (field paths like `signals.3.kind`, nothing stored), TooLarge,
        QuotaExceeded (outbox full and the profile says refuse).
        """
        parsed = parse_signal_list(signals, max_items=self.settings.max_request_items)
        return await self.accept_parsed(parsed)

    async def accept_parsed(self, signals: list[SignalIn]) -> list[str]:
        now = utcnow()
        profile = self.settings.profile
        rows = signal_rows(signals, now, profile)
        buckets = self.windows.observe_many(((s.kind, s.attrs, s.at) for s in signals), now)
        withdrawn = self.store.analytics_withdrawn and not self.consent.analytics
        hits = None
        if not withdrawn and self.uplink is not None and self.uplink.mode() == "aggregate":
            window_s = profile.uplink.aggregate_window_s
            clock = self.store.clock()
            hits = [aggregate_hit(item.kind, item.attrs, clock, window_s) for item in signals]
        try:
            done = await self.store.accept_signals(rows, buckets, hits=hits, withdrawn=withdrawn)
        except BaseException as exc:
            # The windows already counted these signals: rebuild them from what is stored.
            self.windows = FeatureWindows.load(await self.store.load_buckets())
            if isinstance(exc, QuotaExceeded):
                self.metrics.inc("signals_refused", len(rows))
            raise
        self.metrics.inc("signals_accepted", len(rows))
        self.metrics.inc("signals_evicted", done.evicted)
        self.metrics.inc("signals_expired", done.expired)
        self.metrics.inc("signals_withdrawn", done.withdrawn)
        self.metrics.inc("signals_aggregated", done.aggregated)
        if self.uplink is not None:
            self.uplink.poke()
        return [r.id for r in rows]

    async def set_consent(self, purposes: dict[str, bool]) -> ConsentState:
        """Store the user's decision for all three purposes (versioned, timed)."""
        checked = parse_purposes(purposes)
        at = format_time(utcnow())
        withdraw = self.consent.analytics and not checked["analytics"]
        before = self.store.drops.get("withdrawn", 0)
        # Stop batching first: nothing cut from here on, then purge what is pending.
        self.consent = ConsentState(
            checked["analytics"],
            checked["personalization"],
            checked["marketing"],
            self.consent.version,
            self.consent.updated_at,
        )
        version = await self.store.set_consent(checked, at, purge=withdraw)
        self.consent = ConsentState(
            checked["analytics"], checked["personalization"], checked["marketing"], version, at
        )
        if withdraw:
            purged = self.store.drops.get("withdrawn", 0) - before
            self.metrics.inc("signals_withdrawn", purged)
            log.info("analytics withdrawn: %d pending signals purged", purged)
        log.info("consent v%d: %s", version, checked)
        if self.uplink is not None:
            self.uplink.poke()
        return self.consent

    async def decide(self, surface: str, limit: int = 3, *, explain: bool = False) -> Decision:
        """One local ranking decision for `surface` (see `agent.ranking.decide`)."""
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
        returned the offer. A conversion is attributed (`agent.attribution`) to the campaign's
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

    async def _start(self) -> None:
        settings = self.settings
        try:
            trust = await asyncio.to_thread(load_trust, settings.trust)
            verifier = Verifier.from_public_keys(trust.keys)
        except (OSError, ProtocolError) as exc:
            raise ConfigError(f"bad trust file: {exc}", source=str(settings.trust)) from exc
        if settings.topic_root == DEFAULT_ROOT and trust.topic_root != DEFAULT_ROOT:
            settings = self.settings = settings.model_copy(update={"topic_root": trust.topic_root})
        await self.store.open()
        self._opened = True
        try:
            self.model = await asyncio.to_thread(load_default_model)
        except ModelRejected as exc:
            log.error("no usable model, ranking by priority: %s", exc)  # noqa: TRY400
        models_dir = settings.data_dir / "models"
        self.model_updates = ModelUpdater(
            UpdateConfig(
                device_id=settings.device_id,
                profile=settings.profile.name,
                models_dir=models_dir,
                scoring_budget_ms=settings.profile.budgets.scoring_cpu_ms,
                candidates=settings.profile.budgets.max_candidates,
                cohorts=tuple(settings.profile.cohorts),
            ),
            verifier,
            self.metrics,
            running=lambda: self.model,
            swap=self._swap_model,
            on_report=self._republish_state,
        )
        await self.model_updates.open()
        # issue 5: the last good update, else the newest good one kept below it, else default
        current, previous = await asyncio.to_thread(
            load_kept, models_dir, self.model_updates.refused
        )
        if current is not None:
            self.previous_model = previous if previous is not None else self.model
            self.model = current
        for row in await self.store.load_consent():
            self.consent = _with(
                self.consent, row.purpose, row.granted, row.version, row.updated_at
            )
        self.windows = FeatureWindows.load(await self.store.load_buckets())
        self.offers = OfferBook(verifier, self.store, self.metrics)
        await self.offers.load()
        today = self.local_day(utcnow())
        self.caps = CapCounts.load(await self.store.load_cap_counts(today), today)
        self.claims = Claims(
            settings,
            self.store,
            verifier,
            self.metrics,
            link=lambda: self.link,
            offer=self.offers.get,
        )
        await self.claims.start()
        self.commands = Commands(
            settings.device_id, self.store, verifier, self.metrics, on_forget=self._forgotten
        )
        self.link = Link(
            settings,
            birth=self._birth,
            on_message=self._on_message,
            on_connected=self._on_connected,
            metrics=self.metrics,
        )
        self.uplink = Uplink(
            settings,
            self.store,
            self.link,
            self.metrics,
            consent=lambda: self.consent,
            model_version=lambda: self.model_version,
        )
        await self.uplink.start()
        self._spawn(self.link.run(), "link")
        self._spawn(self.uplink.run(), "uplink")
        self._spawn(self._maintenance(), "maintenance")
        await self.check_memory()
        self._spawn(self._watch_memory(), "memory")
        self._spawn(self.claims.run(), "claims")
        if settings.api_port is not None:
            self.api = LocalApi(self, settings.api_port)
            await self.api.start()
        log.info(
            "agent %s up (profile %s, model v%s, outbox %d)",
            settings.device_id,
            settings.profile.name,
            self.model_version,
            self.store.depth,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"agent-{self.settings.device_id}-{name}")
        task.add_done_callback(_report_crash)
        self._tasks.append(task)

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

    # ------------------------------------------------------------ wiring

    def _birth(self) -> State:
        profile = self.settings.profile
        return State(
            device_id=self.settings.device_id,
            status="online",
            at=utcnow(),
            profile=profile.name,
            agent_version=AGENT_VERSION,
            model_version=self.model_version,
            cohorts=list(profile.cohorts),
            model_update=self.model_updates.report if self.model_updates is not None else None,
        )

    def _republish_state(self) -> None:
        """The model update report changed: publish the retained state again (the next birth
        carries it anyway when the link is down now)."""
        if self.link is None or not self.link.connected.is_set():
            return
        self._spawn(self._publish_state(), "state")

    async def _publish_state(self) -> None:
        if self.link is None:
            return
        try:
            await self.link.publish(
                self.settings.topics.state(self.settings.device_id),
                codec.encode(self._birth()),
                retain=True,
            )
        except LinkDown as exc:
            log.debug("state not republished: %s", exc)

    def _on_connected(self) -> None:
        if self.uplink is not None:
            self.uplink.on_connected()
        if self.claims is not None:
            self.claims.on_connected()

    async def _on_message(self, message: Incoming) -> None:
        if message.kind == "ack" and self.uplink is not None:
            await self.uplink.handle_ack(message.payload)
        elif message.kind in ("offers", "cohort_offers") and self.offers is not None:
            verdict = await self.offers.handle(message.kind, message.subject, message.payload)
            if message.kind == "offers" and self.uplink is not None and verdict.bundle_id:
                self.uplink.poke()  # a receipt to send
        elif message.kind == "manifest" and self.model_updates is not None:
            self.model_updates.submit(message.payload)
        elif message.kind == "claim" and self.claims is not None:
            await self.claims.handle_result(message.payload)
            if self.uplink is not None:
                self.uplink.poke()  # a receipt to send
        elif message.kind == "cmd" and self.commands is not None:
            if await self.commands.handle(message.payload) and self.uplink is not None:
                self.uplink.poke(flush=True)  # a receipt to send
        else:
            log.debug("not handled yet: %s on %s", message.kind, message.topic)

    async def _forgotten(self, removed: dict[str, int]) -> None:
        """A `forget` was committed: drop what memory still holds of the erased data."""
        self.windows = FeatureWindows()
        self.decisions.forget(utcnow())
        if self.claims is not None:
            self.claims.refused = frozenset()
        self.metrics.inc("signals_forgotten", removed.get("signals", 0))

    def _outcome_stored(self) -> None:
        if self.uplink is not None:
            self.uplink.poke(flush=True)  # outcomes go up at once, not at the batch age

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

    async def check_memory(self) -> bool:
        """Sample the resident set against the profile's budget; over it, shed what can be
        shed: the store's page cache, the latency samples, freed heap. True when over."""
        rss = await asyncio.to_thread(rss_bytes)
        if not self.memory.observe(rss, time.monotonic()):
            return False
        self.metrics.inc("memory_over_budget")
        self.metrics.decision_ms.clear()
        await self.store.shrink_memory()
        await asyncio.to_thread(_collect_and_trim)
        return True

    async def _watch_memory(self) -> None:
        while True:
            await asyncio.sleep(MEMORY_SAMPLE_S)
            await self.check_memory()

    async def _maintenance(self) -> None:
        while True:
            expired = await self.store.expire(self.store.clock())
            if expired:
                self.metrics.inc("signals_expired", expired)
                log.info("dropped %d expired signals", expired)
            await self.store.prune_buckets(prune_cutoff(utcnow()))
            now = utcnow()
            await self.store.prune_decisions(
                self.local_day(now) - 1,
                now.timestamp() - attribution.longest_window_s(self.settings.profile.decisions),
            )
            await asyncio.sleep(MAINTENANCE_S)


def _with(state: ConsentState, purpose: str, granted: bool, version: int, at: str) -> ConsentState:
    values = state.purposes()
    if purpose in values:
        values[purpose] = granted
    return ConsentState(
        values["analytics"],
        values["personalization"],
        values["marketing"],
        max(version, state.version),
        at,
    )


def _collect_and_trim() -> None:
    gc.collect()
    trim_heap()


def _report_crash(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s died: %r", task.get_name(), exc, exc_info=exc)


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
