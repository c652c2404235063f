"""The agent's intake path: signals an app hands in (validated, counted into the feature
windows, stored against the outbox quota) and the user's consent decisions.

Intake is hot (`bench/intake_bench.py`): one direct call into the store thread per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.config import AgentSettings
from agent.errors import QuotaExceeded
from agent.features.windows import FeatureWindows
from agent.intake.aggregates import hit as aggregate_hit
from agent.intake.consent import ConsentBox, ConsentState, parse_purposes
from agent.intake.validate import SignalIn, parse_signal_list, signal_rows
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from protocol.ids import format_time, utcnow

log = logging.getLogger(__name__)


class Intake:
    """Signals and consent in; `poke` wakes the uplink, `mode` says raw or aggregate."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        store: Store,
        windows: FeatureWindows,
        consent: ConsentBox,
        metrics: Metrics,
        mode: Callable[[], str],
        poke: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._windows = windows
        self._consent = consent
        self._metrics = metrics
        self._mode = mode
        self._poke = poke

    async def accept_signals(self, signals: list[dict[str, Any]]) -> list[str]:
        """Validate and store signals; returns their ids once COMMITTED.

        Raises InvalidInput (field paths like `signals.3.kind`, nothing stored), TooLarge,
        QuotaExceeded (outbox full and the profile says refuse).
        """
        parsed = parse_signal_list(signals, max_items=self._settings.max_request_items)
        return await self.accept_parsed(parsed)

    async def accept_parsed(self, signals: list[SignalIn]) -> list[str]:
        now = utcnow()
        profile = self._settings.profile
        store = self._store
        rows = signal_rows(signals, now, profile)
        buckets = self._windows.observe_many(((s.kind, s.attrs, s.at) for s in signals), now)
        withdrawn = store.counters.analytics_withdrawn and not self._consent.state.analytics
        hits = None
        if not withdrawn and self._mode() == "aggregate":
            window_s = profile.uplink.aggregate_window_s
            clock = store.clock()
            hits = [aggregate_hit(item.kind, item.attrs, clock, window_s) for item in signals]
        try:
            done = await store.call(store.outbox.accept, rows, buckets, hits, withdrawn)
        except BaseException as exc:
            # The windows already counted these signals: rebuild them from what is stored.
            self._windows.reset(await store.call(store.buckets.load))
            if isinstance(exc, QuotaExceeded):
                self._metrics.inc("signals_refused", len(rows))
            raise
        inc = self._metrics.inc
        inc("signals_accepted", len(rows))
        inc("signals_evicted", done.evicted)
        inc("signals_expired", done.expired)
        inc("signals_withdrawn", done.withdrawn)
        inc("signals_aggregated", done.aggregated)
        self._poke()
        return [r.id for r in rows]

    async def set_consent(self, purposes: dict[str, bool]) -> ConsentState:
        """Store the user's decision for all three purposes (versioned, timed)."""
        checked = parse_purposes(purposes)
        at = format_time(utcnow())
        box = self._consent
        withdraw = box.state.analytics and not checked["analytics"]
        before = self._store.drops.get("withdrawn", 0)
        # Stop batching first: nothing cut from here on, then purge what is pending.
        box.set(
            ConsentState(
                checked["analytics"],
                checked["personalization"],
                checked["marketing"],
                box.state.version,
                box.state.updated_at,
            )
        )
        version = await self._store.call(self._store.consent.set, checked, at, withdraw)
        box.set(
            ConsentState(
                checked["analytics"], checked["personalization"], checked["marketing"], version, at
            )
        )
        if withdraw:
            purged = self._store.drops.get("withdrawn", 0) - before
            self._metrics.inc("signals_withdrawn", purged)
            log.info("analytics withdrawn: %d pending signals purged", purged)
        log.info("consent v%d: %s", version, checked)
        self._poke()
        return box.state
