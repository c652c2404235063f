"""The agent's own background work: store maintenance, the memory watch, and the retained
state (birth message, republished when the model update report changes)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from datetime import datetime

from agent import AGENT_VERSION
from agent.config import AgentSettings
from agent.decide import attribution
from agent.errors import LinkDown, StoreError
from agent.features.windows import prune_cutoff
from agent.link.transport import Transport
from agent.model.scoring import warm
from agent.model.slot import ModelSlot
from agent.model.update import ModelUpdater
from agent.runtime.memory import (
    MB,
    SETTLE_S,
    MemoryBudget,
    page_out_clean_file_pages,
    rss_bytes,
    trim_heap,
)
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from protocol import codec
from protocol.envelopes import State
from protocol.ids import utcnow

log = logging.getLogger(__name__)

MAINTENANCE_S = 60.0
MEMORY_SAMPLE_S = 10.0
"""The memory watch's interval near (or over) the budget."""
MEMORY_SAMPLE_FAR_S = 60.0
"""Its interval while the resident set is under `NEAR_BUDGET` of the budget: growth from
there to the budget takes minutes, not seconds (an idle agent wakes no more than it needs)."""
NEAR_BUDGET = 0.75


async def maintenance(
    store: Store,
    metrics: Metrics,
    settings: AgentSettings,
    local_day: Callable[[datetime], int],
) -> None:
    """Every `MAINTENANCE_S`: look at the disk (leave the full state, bound the quota by the
    free space), expire signals, prune feature buckets, caps, exposures and idempotency keys.
    A full disk skips the rest of a round (what it deletes needs room in the WAL first)."""
    longest = attribution.longest_window_s(settings.profile.decisions)
    while True:
        try:
            await store.call(store.recheck_space)
            expired = await store.call(store.outbox.expire)
            if expired:
                metrics.inc("signals_expired", expired)
                log.info("dropped %d expired signals", expired)
            await store.call(store.buckets.prune, prune_cutoff(utcnow()))
            now = utcnow()
            await store.call(store.decisions.prune, local_day(now) - 1, now.timestamp() - longest)
            await store.call(store.idempotency.prune)
        except StoreError as exc:  # a full disk, an I/O error: the next round tries again
            log.debug("maintenance round skipped: %s", exc)
        await asyncio.sleep(MAINTENANCE_S)


class MemoryWatch:
    """The resident set against the profile's budget, and what is shed over it."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        budget: MemoryBudget,
        metrics: Metrics,
        store: Store,
        slot: ModelSlot,
    ) -> None:
        self._settings = settings
        self._budget = budget
        self._metrics = metrics
        self._store = store
        self._slot = slot

    async def check(self) -> bool:
        """Sample the resident set against the profile's budget; over it, shed what can be
        shed: the store's page cache, the latency samples, freed heap. True when over."""
        rss = await asyncio.to_thread(rss_bytes)
        if not self._budget.observe(rss, time.monotonic()):
            return False
        self._metrics.inc("memory_over_budget")
        self._metrics.decision_ms.clear()
        await self._store.shrink_memory()
        await asyncio.to_thread(_collect_and_trim)
        await self.page_out()
        return True

    async def page_out(self, *, settled: bool = False) -> None:
        """Hand clean library pages back to the kernel (`budgets.reclaim_clean_pages`), when
        this agent is the process (in a shared one the pages are its neighbours' too), at
        most every `PAGE_OUT_EVERY_S`; `settled`: the one page-out once start-up has
        settled (`memory.SETTLE_S`), whatever the last one's age."""
        if not self._settings.profile.budgets.reclaim_clean_pages:
            return
        now = time.monotonic()
        due = self._budget.settle_due(now) if settled else self._budget.page_out_due(now)
        if not due:
            return
        freed = await asyncio.to_thread(page_out_clean_file_pages)
        if freed is None:
            return
        self._metrics.inc("memory_page_outs")
        self._metrics.inc("memory_paged_out_bytes", freed)
        log.debug("paged out %.1f MB of clean file pages", freed / MB)
        model = self._slot.current
        if model is not None:  # the scoring pages, back before a decision waits on them
            await asyncio.to_thread(warm, model)

    def next_sample_s(self) -> float:
        """Every `MEMORY_SAMPLE_S` near the budget, every `MEMORY_SAMPLE_FAR_S` well under it."""
        near = self._budget.rss >= NEAR_BUDGET * self._budget.budget_bytes
        return MEMORY_SAMPLE_S if near else MEMORY_SAMPLE_FAR_S

    async def run(self) -> None:
        """Sample the resident set (`Agent` starts this loop only when the agent is the
        process: in a shared one the samples judge nothing and thousands of agents would
        each read the same number). First, once start-up has settled, what only it touched
        is handed back (`memory.SETTLE_S`)."""
        await asyncio.sleep(SETTLE_S)
        await self.page_out(settled=True)
        while True:
            await asyncio.sleep(self.next_sample_s())
            await self.check()


class StateReport:
    """The retained `State` (the link's birth) and its republishing when it changes."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        slot: ModelSlot,
        updates: ModelUpdater,
        changed: asyncio.Event,
    ) -> None:
        """`changed`: set by the updater (`on_report`) whenever its report changes."""
        self._settings = settings
        self._slot = slot
        self._updates = updates
        self.changed = changed
        self.policy_version: Callable[[], int] = lambda: 0
        """The cloud policy version in force (set once the policy keeper exists, issue 18)."""

    def birth(self) -> State:
        profile = self._settings.profile
        return State(
            device_id=self._settings.device_id,
            status="online",
            at=utcnow(),
            profile=profile.name,
            agent_version=AGENT_VERSION,
            model_version=self._slot.version,
            cohorts=list(profile.cohorts),
            model_update=self._updates.report,
            policy_version=self.policy_version(),
        )

    async def republish(self, link: Transport) -> None:
        """Publish the state again each time it changes while the link is up (the next
        birth carries it anyway when the link is down)."""
        topic = self._settings.topics.state(self._settings.device_id)
        while True:
            await self.changed.wait()
            self.changed.clear()
            if not link.connected.is_set():
                continue
            try:
                await link.publish(topic, codec.encode(self.birth()), retain=True)
            except LinkDown as exc:
                log.debug("state not republished: %s", exc)


def _collect_and_trim() -> None:
    gc.collect()
    trim_heap()
