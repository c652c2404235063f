"""Uplink batches: cut by size and age, persisted seq, bounded in flight, resent until acked."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from agent import AGENT_VERSION
from agent.config import AgentSettings
from agent.consent import ConsentState
from agent.errors import LinkDown
from agent.link import Link
from agent.logutil import OnceLogger
from agent.metrics import Metrics
from agent.store import Store, StoredBatch
from protocol import codec
from protocol.envelopes import MAX_OUTCOMES_PER_BATCH, MAX_RECEIPTS_PER_BATCH, Ack, Batch
from protocol.errors import ProtocolError
from protocol.ids import utcnow

log = logging.getLogger(__name__)


class Uplink:
    """Moves the outbox to the gateway: a batch's rows leave the device only on its ack."""

    def __init__(
        self,
        settings: AgentSettings,
        store: Store,
        link: Link,
        metrics: Metrics,
        *,
        consent: Callable[[], ConsentState],
        model_version: Callable[[], int | None],
    ) -> None:
        self.settings = settings
        self.cfg = settings.profile.uplink
        self._store = store
        self._link = link
        self._metrics = metrics
        self._consent = consent
        self._model_version = model_version
        self._topic = settings.topics.batch(settings.device_id)
        self._in_flight: dict[int, float | None] = {}  # seq -> monotonic time sent (None: due)
        self._wake = asyncio.Event()
        self._flush = False
        self._faults = OnceLogger(log)
        self._tick = max(0.02, min(0.25, self.cfg.batch_max_age_s / 4 or 0.02))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        """Batches stored by an earlier run are in flight again: resent on the next connect."""
        for batch in await self._store.batches():
            self._in_flight[batch.seq] = None

    def poke(self, *, flush: bool = False) -> None:
        """New rows in the outbox (or a flush request): look at it now, not at the next tick."""
        if flush:
            self._flush = True
        self._wake.set()

    def on_connected(self) -> None:
        """A (re)connect: every unacked batch is due again."""
        for seq in self._in_flight:
            self._in_flight[seq] = None
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._tick):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.step()

    async def step(self) -> None:
        """Resend what is overdue, then cut new batches while there is room in flight."""
        if not self._link.connected.is_set():
            return
        analytics = self._consent().analytics
        try:
            await self._resend_due()
            while len(self._in_flight) < self.cfg.max_in_flight:
                batch = await self._maybe_cut(analytics)
                if batch is None:
                    break
                await self._send(batch.seq, batch.payload, resend=False)
            if self._flush:
                pending = await self._store.pending()
                if not (pending.signals or pending.outcomes or pending.receipts):
                    self._flush = False
        except LinkDown as exc:
            log.debug("uplink paused: %s", exc)

    async def _resend_due(self) -> None:
        now = time.monotonic()
        due = [
            seq
            for seq, sent in sorted(self._in_flight.items())
            if sent is None or now - sent >= self.cfg.ack_timeout_s
        ]
        if not due:
            return
        stored = {b.seq: b for b in await self._store.batches()}
        for seq in due:
            batch = stored.get(seq)
            if batch is None:  # acked meanwhile
                self._in_flight.pop(seq, None)
                continue
            await self._send(seq, batch.payload, resend=True, attempts=batch.attempts)

    async def _maybe_cut(self, analytics: bool) -> StoredBatch | None:
        pending = await self._store.pending()
        data = pending.signals + pending.outcomes if analytics else 0
        if data == 0 and pending.receipts == 0:
            return None
        age = time.time() - pending.oldest if pending.oldest is not None else 0.0
        full = pending.signals >= self.cfg.batch_max_signals
        data_due = data > 0 and (full or age >= self.cfg.batch_max_age_s or self._flush)
        if not data_due and pending.receipts == 0:
            return None
        return await self._store.cut_batch(
            max_signals=self.cfg.batch_max_signals,
            max_outcomes=MAX_OUTCOMES_PER_BATCH,
            max_receipts=MAX_RECEIPTS_PER_BATCH,
            include_data=analytics,
            build=self._build,
        )

    def _build(
        self,
        seq: int,
        signals: list[dict[str, Any]],
        outcomes: list[dict[str, Any]],
        receipts: list[str],
    ) -> bytes:
        """The batch payload (runs on the store thread, inside the cut's transaction)."""
        counters = self._metrics.counters
        batch = Batch.model_validate(
            {
                "device_id": self.settings.device_id,
                "seq": seq,
                "sent_at": utcnow(),
                "agent_version": AGENT_VERSION,
                "model_version": self._model_version(),
                "signals": signals,
                "outcomes": outcomes,
                "receipts": receipts,
                "stats": {
                    "dropped": counters.get("signals_expired", 0),
                    "evicted": counters.get("signals_evicted", 0),
                    "outbox_depth": self._store.depth,
                },
            }
        )
        return codec.encode(batch, compress=self.cfg.compress_flag)

    async def _send(self, seq: int, payload: bytes, *, resend: bool, attempts: int = 0) -> None:
        self._in_flight[seq] = None
        await self._link.publish(self._topic, payload, qos=1)
        if seq not in self._in_flight:  # acked while we waited for the PUBACK
            return
        self._in_flight[seq] = time.monotonic()
        await self._store.mark_sent(seq)
        if resend and attempts > 0:
            self._metrics.inc("batches_resent")
            log.debug("resent batch %d (attempt %d)", seq, attempts + 1)
        else:
            self._metrics.inc("batches_sent")

    async def handle_ack(self, payload: bytes) -> None:
        """`down/ack`: delete the listed batches and their rows; unknown seqs are counted."""
        try:
            ack = codec.decode(payload, Ack)
        except ProtocolError as exc:
            self._metrics.inc("messages_bad")
            self._faults.log(exc.reason, "bad ack: %s", exc)
            return
        result = await self._store.ack(ack.acks)
        for seq in result.seqs:
            self._in_flight.pop(seq, None)
        self._metrics.inc("batches_acked", len(result.seqs))
        self._metrics.inc("signals_acked", result.signals)
        self._metrics.inc("outcomes_acked", result.outcomes)
        unknown = len(set(ack.acks) - set(result.seqs))
        if unknown:
            self._metrics.inc("acks_unknown", unknown)
        if result.seqs:
            self._wake.set()

    async def flush(self, timeout: float) -> bool:  # a deadline for a loop
        """Send everything waiting and wait for acks, up to `timeout`; True if all acked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poke(flush=True)
            await self.step()
            if self._store.depth == 0 and not self._in_flight:
                return True
            if not self._consent().analytics and not self._in_flight:
                return False  # nothing may leave; do not hold up a shutdown
            await asyncio.sleep(0.05)
        return False
