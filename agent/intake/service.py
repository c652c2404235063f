"""The agent's intake path: signals an app hands in (validated, counted into the feature
windows, stored against the outbox quota) and the user's consent decisions.

Mixed into `agent.runtime.agent.Agent`, whose store, windows, consent, uplink and metrics it uses.
Intake is hot (`bench/intake_bench.py`): plain methods of the agent, no extra hop a signal.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.errors import QuotaExceeded
from agent.features.windows import FeatureWindows
from agent.intake.aggregates import hit as aggregate_hit
from agent.intake.consent import ConsentState, parse_purposes
from agent.intake.validate import SignalIn, parse_signal_list, signal_rows
from protocol.ids import format_time, utcnow

if TYPE_CHECKING:
    from agent.config import AgentSettings
    from agent.link.uplink import Uplink
    from agent.runtime.metrics import Metrics
    from agent.store.core import Store

log = logging.getLogger(__name__)


class SignalIntake:
    """Signals and consent in; `Agent` provides the parts."""

    if TYPE_CHECKING:
        settings: AgentSettings
        store: Store
        metrics: Metrics
        consent: ConsentState
        windows: FeatureWindows
        uplink: Uplink | None

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
            done = await self.store.call(self.store.outbox.accept, rows, buckets, hits, withdrawn)
        except BaseException as exc:
            # The windows already counted these signals: rebuild them from what is stored.
            self.windows = FeatureWindows.load(await self.store.call(self.store.buckets.load))
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
        version = await self.store.call(self.store.consent.set, checked, at, withdraw)
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
