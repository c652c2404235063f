"""The retention loop: each kind's rows past its policy deleted (PostgreSQL: old daily
partitions of `signals` dropped, new ones created ahead), hourly by default.

The policy is `GatewaySettings.retention_*_days`; the SQL is `db/retention.py`. The cutoff
comes from the backend's clock, so tests move time by giving the backend a fake one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import date, timedelta

from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.retention import (
    delete_chunk,
    drop_signal_partitions,
    ensure_signal_partitions,
)
from cloud_gateway.errors import GatewayError

log = logging.getLogger(__name__)

PARTITIONS_AHEAD = 3
"""Daily `signals` partitions kept ready from today on (PostgreSQL)."""
MAX_CHUNKS = 10_000
"""Chunks per kind per run at most (a bound on one run; the next run goes on)."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days each kind is kept after the day it was received."""

    signals: int = 30
    aggregates: int = 90
    outcomes: int = 180
    batches: int = 400
    chunk_rows: int = 5000

    @classmethod
    def of(cls, s: GatewaySettings) -> RetentionPolicy:
        return cls(
            signals=s.retention_signals_days,
            aggregates=s.retention_aggregates_days,
            outcomes=s.retention_outcomes_days,
            batches=s.retention_batches_days,
            chunk_rows=s.retention_chunk_rows,
        )

    def cutoffs(self, today: date) -> dict[str, date]:
        """Pure: per kind, the first day kept (rows received before it go)."""
        return {
            kind: today - timedelta(days=days)
            for kind, days in (
                ("signals", self.signals),
                ("aggregates", self.aggregates),
                ("outcomes", self.outcomes),
                ("batches", self.batches),
            )
        }


async def enforce_retention(db: Backend[Session], policy: RetentionPolicy) -> dict[str, int]:
    """One run: rows (and, on PostgreSQL, `signals` partitions) removed, per kind."""
    today = db.clock().date()
    removed: dict[str, int] = {}
    if db.dialect.name == "postgresql":
        await db.call(ensure_signal_partitions, today, PARTITIONS_AHEAD)
        removed["signal_partitions"] = await db.call(
            drop_signal_partitions, policy.cutoffs(today)["signals"]
        )
    for kind, cutoff in policy.cutoffs(today).items():
        total = 0
        for _ in range(MAX_CHUNKS):
            n = await db.call(delete_chunk, kind, cutoff, policy.chunk_rows)
            total += n
            if n < policy.chunk_rows:
                break
        removed[kind] = total
    return removed


async def run_retention(db: Backend[Session], policy: RetentionPolicy, interval_s: float) -> None:
    """Enforce the policy now, then every `interval_s` (a supervised loop of the gateway)."""
    while True:
        try:
            removed = await enforce_retention(db, policy)
            if any(removed.values()):
                log.info("retention removed %s", removed)
        except GatewayError as exc:
            log.warning("retention run failed: %s", exc)
        await asyncio.sleep(interval_s)
