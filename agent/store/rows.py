"""The store's plain data: rows going in, what operations answer, and the live counters."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from agent.intake.aggregates import signal_charge
from agent.store import outbox_sql


@dataclass(frozen=True, slots=True)
class NewSignal:
    id: str
    kind: str
    at: str
    attrs_json: str
    priority: int
    expires_at: float

    @property
    def size(self) -> int:
        return signal_charge(self.id, self.kind, self.at, self.attrs_json)


@dataclass(frozen=True, slots=True)
class NewOutcome:
    id: str
    offer_id: str
    campaign_id: str
    variant: str
    kind: str
    at: str
    surface: str
    score: float | None
    model_version: int | None

    @property
    def size(self) -> int:
        return 96 + len(self.id) + len(self.offer_id) + len(self.campaign_id) + len(self.surface)


@dataclass(frozen=True, slots=True)
class Pending:
    """What waits in the outbox for a batch: counts, and the age of the oldest item."""

    signals: int
    outcomes: int
    receipts: int
    oldest: float | None
    aggregates: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    """What one accepted request did to the outbox, beyond storing its signals."""

    evicted: int = 0
    expired: int = 0
    withdrawn: int = 0
    aggregated: int = 0
    duplicates: int = 0
    """Signals whose client id the outbox already held (not stored again)."""


@dataclass(frozen=True, slots=True)
class ConsentRow:
    purpose: str
    granted: bool
    version: int
    updated_at: str


@dataclass(slots=True)
class Counters:
    """What the outbox holds, kept by the tables on the store thread as they commit; plain
    values the event loop reads for status, gauges and `drain` without a query."""

    outbox_max_bytes: int
    signal_rows: int = 0
    outcome_rows: int = 0
    outbox_bytes: int = 0
    aggregate_unacked: int = 0
    """Signals counted in aggregates, not yet confirmed by the gateway."""
    drops: dict[str, int] = field(default_factory=dict)
    """Persisted totals: evicted, expired, withdrawn, refused, ..."""
    budget_day: str = ""
    budget_bytes: int = 0
    analytics_withdrawn: bool = False
    """Analytics was granted, then withdrawn (and not granted again)."""
    outbox_id: str = ""
    """Random, made with the store; batches carry it."""

    @property
    def depth(self) -> int:
        """Signals and outcomes in the outbox, sent or not (they leave only on ack),
        plus signals counted in aggregates the gateway has not confirmed yet."""
        return self.signal_rows + self.outcome_rows + self.aggregate_unacked

    def drop(self, reason: str, n: int) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def recount(self, db: sqlite3.Connection) -> None:
        """Read every counter back from the database (after open, purge, erasure)."""
        (s_rows,) = db.execute("SELECT COUNT(*) FROM signals").fetchone()
        (o_rows,) = db.execute("SELECT COUNT(*) FROM outcomes").fetchone()
        self.signal_rows, self.outcome_rows = int(s_rows), int(o_rows)
        self.outbox_bytes = outbox_sql.outbox_bytes(db)
        self.aggregate_unacked = outbox_sql.aggregate_unacked(db)
        self.drops = outbox_sql.drop_counts(db)
        self.analytics_withdrawn = outbox_sql.meta_int(db, "analytics_withdrawn") == 1
        self.budget_day, self.budget_bytes = outbox_sql.budget(db)
        row = db.execute("SELECT value FROM meta WHERE key = 'outbox_id'").fetchone()
        self.outbox_id = str(row[0]) if row else ""
