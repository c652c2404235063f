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
from agent.intake.kinds import KindTable
from agent.intake.validate import SignalIn, check_signals, parse_signal_list, signal_rows
from agent.runtime.metrics import Metrics
from agent.store import idempotency
from agent.store.core import Store
from protocol.ids import format_time, utcnow

log = logging.getLogger(__name__)


def signals_answer(ids: list[str]) -> dict[str, Any]:
    """The body of `POST /v1/signals`' 202: how many signals are held, and their ids."""
    return {"accepted": len(ids), "ids": ids}


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
        self.kinds = KindTable(settings.profile)

    async def accept_signals(self, signals: list[dict[str, Any]]) -> list[str]:
        """Validate and store signals; returns their ids once COMMITTED.

        Raises InvalidInput (field paths like `signals.3.kind`, nothing stored), TooLarge,
        QuotaExceeded (outbox full and the profile says refuse).
        """
        parsed = parse_signal_list(signals, max_items=self._settings.max_request_items)
        return await self.accept_parsed(parsed)

    async def accept_parsed(self, signals: list[SignalIn]) -> list[str]:
        """Store checked signals; the ids of the request's signals once COMMITTED (a signal
        whose client `id` the outbox already holds is not stored again, and keeps its id)."""
        now = utcnow()
        profile = self._settings.profile
        store = self._store
        check_signals(signals, now, profile, self.kinds)
        requested = signals
        if any(s.id is not None for s in signals):
            signals = await self._not_held(signals)
        rows = signal_rows(signals, now, profile)
        fresh = iter([r.id for r, s in zip(rows, signals, strict=True) if s.id is None])
        ids = [s.id if s.id is not None else next(fresh) for s in requested]
        idempotency.answer_with(202, signals_answer(ids))
        buckets = self._windows.observe_many(((s.kind, s.attrs, s.at) for s in signals), now)
        withdrawn = store.counters.analytics_withdrawn and not self._consent.state.analytics
        hits = None
        if not withdrawn and self._mode() == "aggregate":
            window_s = profile.uplink.aggregate_window_s
            clock = store.clock()
            hits = [aggregate_hit(item.kind, item.attrs, clock, window_s) for item in signals]
        try:
            client_ids = frozenset(s.id for s in signals if s.id is not None)
            done = await store.call(store.outbox.accept, rows, buckets, hits, withdrawn, client_ids)
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
        inc("signals_duplicate", len(requested) - len(rows) + done.duplicates)
        self._poke()
        return ids

    async def _not_held(self, signals: list[SignalIn]) -> list[SignalIn]:
        """The signals whose client id is neither held in the outbox nor earlier in the
        request (the outbox checks again in its transaction: `Outbox.accept`)."""
        held = await self._store.call(
            self._store.outbox.held_ids, [s.id for s in signals if s.id is not None]
        )
        seen: set[str] = set(held)
        out: list[SignalIn] = []
        for item in signals:
            if item.id is not None:
                if item.id in seen:
                    continue
                seen.add(item.id)
            out.append(item)
        return out

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
