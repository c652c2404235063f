"""The device's own report of why campaigns were or were not shown (issue 18): every
`explain_report_s`, the per-campaign counts of `agent.decide.explain` become one signal of kind
`offer_explain` per campaign, stored in the outbox and sent, acknowledged and retried like any
signal.

Within consent: without analytics consent the counts are dropped, counted
`explanations_withheld`. Within the byte budget: while the uplink is degraded (past the
profile's `degrade_at` share of `uplink_bytes_per_day`) they are kept counting in memory and
reported once it is not; the outbox quota applies to them as to every signal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agent.config import AgentSettings
from agent.decide.explain import ExplainTally
from agent.errors import AgentError
from agent.intake.consent import ConsentBox
from agent.intake.validate import SignalIn, signal_rows
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from protocol.ids import utcnow
from protocol.vocabulary import EXPLAIN_KIND

log = logging.getLogger(__name__)

KIND = EXPLAIN_KIND
COUNTERS = ("explanations_reported", "explanations_withheld")


def explain_signals(counts: dict[str, dict[str, int]]) -> list[SignalIn]:
    """One `offer_explain` signal per campaign: `campaign_id` and a count per outcome."""
    return [
        SignalIn(kind=KIND, attrs={"campaign_id": cid, **dict(sorted(row.items()))})
        for cid, row in sorted(counts.items())
        if row
    ]


class ExplainReporter:
    """Moves the decisions' explanation counts into the outbox (`report`, `run`)."""

    def __init__(
        self,
        settings: AgentSettings,
        tally: ExplainTally,
        *,
        store: Store,
        consent: ConsentBox,
        metrics: Metrics,
        held: Callable[[], bool],
        poke: Callable[[], None],
    ) -> None:
        """`held()`: True while the uplink's byte budget says to send less (keep counting)."""
        self._settings = settings
        self._tally = tally
        self._store = store
        self._consent = consent
        self._metrics = metrics
        self._held = held
        self._poke = poke
        for name in COUNTERS:
            metrics.counters.setdefault(name, 0)

    async def report(self) -> int:
        """Store the counts so far as signals; how many were stored."""
        if not self._tally:
            return 0
        if not self._consent.state.analytics:
            dropped = self._tally.drain()
            self._metrics.inc("explanations_withheld", len(dropped))
            return 0
        if self._held():
            return 0
        counts = self._tally.drain()
        signals = explain_signals(counts)
        rows = signal_rows(signals, utcnow(), self._settings.profile)
        try:
            await self._store.call(self._store.outbox.accept, rows, [])
        except AgentError as exc:  # quota refused, disk full: counted again next round
            self._tally.restore(counts)
            log.debug("explanations not stored now: %s", exc)
            return 0
        self._metrics.inc("explanations_reported", len(rows))
        self._poke()
        return len(rows)

    async def run(self) -> None:
        """Report every `explain_report_s`."""
        every = self._settings.profile.decisions.explain_report_s
        while True:
            await asyncio.sleep(every)
            await self.report()
