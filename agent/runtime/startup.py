"""The agent's start-up and wiring: builds the parts in order (trust, store, model, updater,
consent, windows, offers, caps, claims, commands, link, uplink, local API), hands each the
callbacks it calls back into, and runs the background tasks (maintenance, memory watch).

Mixed into `agent.runtime.agent.Agent`, whose parts it creates and whose `close` undoes it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from agent import AGENT_VERSION
from agent.api.local import LocalApi
from agent.decide import attribution
from agent.decide.policy import CapCounts
from agent.errors import ConfigError, LinkDown, ModelRejected
from agent.features.windows import FeatureWindows, prune_cutoff
from agent.intake.consent import ConsentState
from agent.link.commands import Commands
from agent.link.session import Link
from agent.link.uplink import Uplink
from agent.model.scoring import load_default_model, warm
from agent.model.update import ModelUpdater, UpdateConfig, load_kept
from agent.offers.book import OfferBook, load_trust
from agent.offers.claims import Claims
from agent.runtime.memory import MB, page_out_clean_file_pages, rss_bytes, trim_heap
from protocol import codec
from protocol.envelopes import State
from protocol.errors import ProtocolError
from protocol.ids import utcnow
from protocol.signing import Verifier
from protocol.topics import DEFAULT_ROOT

if TYPE_CHECKING:
    from agent.config import AgentSettings
    from agent.decide.decisions import Decisions
    from agent.link.session import Incoming
    from agent.model.scoring import Model
    from agent.runtime.agent import Agent
    from agent.runtime.memory import MemoryBudget
    from agent.runtime.metrics import Metrics
    from agent.store.core import Store

log = logging.getLogger(__name__)

MAINTENANCE_S = 60.0
MEMORY_SAMPLE_S = 10.0


class Startup:
    """Start-up, callbacks and background tasks; `Agent` holds the parts and the seam."""

    if TYPE_CHECKING:
        settings: AgentSettings
        store: Store
        metrics: Metrics
        memory: MemoryBudget
        decisions: Decisions
        consent: ConsentState
        model: Model | None
        previous_model: Model | None
        windows: FeatureWindows
        offers: OfferBook | None
        link: Link | None
        uplink: Uplink | None
        api: LocalApi | None
        model_updates: ModelUpdater | None
        claims: Claims | None
        commands: Commands | None
        caps: CapCounts
        _tasks: list[asyncio.Task[None]]
        _opened: bool

        @property
        def model_version(self) -> int | None: ...

        def local_day(self, now: datetime) -> int: ...

        def _swap_model(self, model: Model) -> None: ...

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
        for row in await self.store.call(self.store.consent.load):
            self.consent = _with(
                self.consent, row.purpose, row.granted, row.version, row.updated_at
            )
        self.windows = FeatureWindows.load(await self.store.call(self.store.buckets.load))
        self.offers = OfferBook(verifier, self.store, self.metrics)
        await self.offers.load()
        today = self.local_day(utcnow())
        self.caps = CapCounts.load(
            await self.store.call(self.store.decisions.cap_counts, today), today
        )
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
        self._spawn(self.claims.run(), "claims")
        if settings.api_port is not None:
            # The API serves the whole agent; only `Agent` mixes this class in.
            self.api = LocalApi(cast("Agent", self), settings.api_port)
            await self.api.start()
        await self.page_out()  # what only start-up touched
        await self.check_memory()
        self._spawn(self._watch_memory(), "memory")
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

    # ------------------------------------------------------------ background tasks

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
        await self.page_out()
        return True

    async def page_out(self) -> None:
        """Hand clean library pages back to the kernel (`budgets.reclaim_clean_pages`), when
        this agent is the process (in a shared one the pages are its neighbours' too), at
        most every `PAGE_OUT_EVERY_S`."""
        if not self.settings.profile.budgets.reclaim_clean_pages:
            return
        if not self.memory.page_out_due(time.monotonic()):
            return
        freed = await asyncio.to_thread(page_out_clean_file_pages)
        if freed is None:
            return
        self.metrics.inc("memory_page_outs")
        self.metrics.inc("memory_paged_out_bytes", freed)
        log.debug("paged out %.1f MB of clean file pages", freed / MB)
        if self.model is not None:  # the scoring pages, back before a decision waits on them
            await asyncio.to_thread(warm, self.model)

    async def _watch_memory(self) -> None:
        while True:
            await asyncio.sleep(MEMORY_SAMPLE_S)
            await self.check_memory()

    async def _maintenance(self) -> None:
        while True:
            expired = await self.store.call(self.store.outbox.expire)
            if expired:
                self.metrics.inc("signals_expired", expired)
                log.info("dropped %d expired signals", expired)
            await self.store.call(self.store.buckets.prune, prune_cutoff(utcnow()))
            now = utcnow()
            await self.store.call(
                self.store.decisions.prune,
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
