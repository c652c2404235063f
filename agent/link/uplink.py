"""Uplink batches: cut by size and age, persisted seq, bounded in flight, resent until acked.

It sleeps until its next due time (a batch's age, an ack timeout, a pacing token, the next
day when held), never on a fixed tick: new rows, acks and a connect wake it (`poke`).
Resends back off per batch and the ack timeout follows measured ack latency
(`agent.link.acktimer`).

Also the daily byte budget (raw degrades to aggregates, then the uplink holds until the
next day) and the paced drain after an outage (a token bucket of batches per second; the
store cuts high priority first, then oldest first).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent import AGENT_VERSION
from agent.config import AgentSettings
from agent.errors import BatchTooLarge, DiskFull, LinkDown, StoreError
from agent.intake.consent import ConsentState
from agent.link.acktimer import AckTimer
from agent.link.downlink import UnknownFields
from agent.link.transport import Transport
from agent.runtime.metrics import Metrics
from agent.store.batches import Refused, StoredBatch
from agent.store.core import Store
from mqttlink.logs import OnceLogger
from protocol import codec
from protocol.envelopes import MAX_OUTCOMES_PER_BATCH, MAX_RECEIPTS_PER_BATCH, Ack, Batch
from protocol.errors import ProtocolError, SignatureError
from protocol.ids import utcnow
from protocol.signing import Verifier

log = logging.getLogger(__name__)

MAX_BATCH_JSON = codec.MAX_DECOMPRESSED // 2
"""A batch's JSON stays within half the gateway's decompressed bound (headroom for a
gateway configured tighter, and for the JSON encoder's choices)."""
MAX_BATCH_PAYLOAD = codec.MAX_COMPRESSED * 3 // 4
"""What is published stays within 3/4 of the gateway's bound on the payload as received."""


def encode_bounded(
    batch: Batch,
    compress: bool | None,
    max_json: int = MAX_BATCH_JSON,
    max_payload: int = MAX_BATCH_PAYLOAD,
) -> bytes:
    """Pure: the payload of `batch`, or BatchTooLarge when its JSON or what would be
    published passes the bounds (the store then cuts a smaller batch)."""
    raw = codec.dumps(batch.model_dump(mode="json", exclude_none=True))
    if len(raw) > max_json:
        raise BatchTooLarge(len(raw), 0)
    payload = codec.maybe_compress(raw, compress)
    if len(payload) > max_payload:
        raise BatchTooLarge(len(raw), len(payload))
    return payload


RETRY_S = 1.0
"""After a store error or a publish refused while the link looked up: look again this soon."""
DAY_S = 86_400.0


@dataclass(slots=True)
class Flight:
    """A batch in flight: when it is due (`timer` time; None: now), when it was last
    published, and how often since this run or connect (Karn's rule and the backoff)."""

    due: float | None = None
    sent: float | None = None
    sends: int = 0
    backoff: int = 0
    """Resends since the gateway last acked anything (the backoff's step)."""


class Uplink:
    """Moves the outbox to the gateway: a batch's rows leave the device only on its ack."""

    def __init__(
        self,
        settings: AgentSettings,
        store: Store,
        link: Transport,
        metrics: Metrics,
        *,
        consent: Callable[[], ConsentState],
        model_version: Callable[[], int | None],
        verifier: Verifier,
        timer: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """`timer`: the monotonic clock of ack timeouts, resends and drain pacing (a test's
        fake one does not wake a sleeping uplink: `poke` after moving it); `rng`: the
        resend jitter; `verifier`: the cloud's keys, which sign the acks (issue 14)."""
        self.settings = settings
        self._verifier = verifier
        self.cfg = settings.profile.uplink
        self._store = store
        self._link = link
        self._metrics = metrics
        self._consent = consent
        self._model_version = model_version
        self._topic = settings.topics.batch(settings.device_id)
        self._timer = timer
        self._in_flight: dict[int, Flight] = {}
        self._wake = asyncio.Event()
        self._stepping = asyncio.Lock()  # one step at a time: the loop's, a flush's, a test's
        self._flush = False
        self._faults = OnceLogger(log)
        self._unknown = UnknownFields(metrics)
        self.acks = AckTimer(
            initial=self.cfg.ack_timeout_s,
            floor=min(self.cfg.ack_timeout_min_s, self.cfg.ack_timeout_s),
            ceiling=max(self.cfg.ack_timeout_max_s, self.cfg.ack_timeout_s),
            cap=max(self.cfg.resend_max_s, self.cfg.ack_timeout_s),
            rng=rng or random.Random(),
        )
        self._data_due: float | None = None  # store-clock time the pending rows are due
        self._paced = False  # rows due, but the drain's tokens ran out
        self._retry_at: float | None = None  # `timer` time to look again after a fault
        self.wakes = 0
        """Times the loop woke (a test and the idle bench see how often it does)."""
        self._budget = settings.profile.budgets.uplink_bytes_per_day
        self._tokens = float(self.cfg.max_in_flight)
        self._refilled = timer()
        self.holding = False

    # ------------------------------------------------------------ budget and pacing

    def today(self) -> str:
        return datetime.fromtimestamp(self._store.clock(), tz=UTC).strftime("%Y-%m-%d")

    def used_today(self) -> int:
        """Bytes published today (resends included), as persisted by the store."""
        return (
            self._store.counters.budget_bytes
            if self._store.counters.budget_day == self.today()
            else 0
        )

    def degraded(self) -> bool:
        """Raw mode over its share of the daily byte budget: aggregates for the rest of it."""
        if self._budget <= 0 or self.cfg.mode == "aggregate":
            return False
        return self.used_today() >= self.cfg.degrade_at * self._budget

    def mode(self) -> str:
        """What new signals become: `raw` rows or `aggregate` counts."""
        return "aggregate" if self.cfg.mode == "aggregate" or self.degraded() else "raw"

    def over_budget(self) -> bool:
        return self._budget > 0 and self.used_today() >= self._budget

    def _take_token(self) -> bool:
        now = self._timer()
        rate = self.cfg.drain_batches_per_s
        burst = float(self.cfg.max_in_flight)
        self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        """Batches stored by an earlier run are in flight again: resent on the next connect."""
        for batch in await self._store.call(self._store.batches.stored):
            self._in_flight[batch.seq] = Flight()

    def poke(self, *, flush: bool = False) -> None:
        """New rows in the outbox (or a flush request): look at it now, not at the next tick."""
        if flush:
            self._flush = True
        self._wake.set()

    def on_connected(self) -> None:
        """A (re)connect: every unacked batch is due again."""
        for flight in self._in_flight.values():
            flight.due = None
        self._wake.set()

    def next_wake(self) -> float:
        """Seconds until the uplink has something to do that nothing else will wake it for
        (`idle_wake_s` at most): the first resend due, the pending rows' age, a pacing
        token, the next day when held, a retry after a fault. Pure, no store query."""
        if not self._link.connected.is_set():
            return math.inf  # a connect wakes it (`on_connected`)
        now = self._timer()
        waits = [self.cfg.idle_wake_s]
        if self._retry_at is not None:
            waits.append(self._retry_at - now)
        if self.holding:
            day = self._store.clock()
            waits.append(DAY_S - day % DAY_S + 1.0)
            return max(0.0, min(waits))
        waits += [0.0 if f.due is None else f.due - now for f in self._in_flight.values()]
        room = len(self._in_flight) < self.cfg.max_in_flight
        if room and self._paced:
            waits.append((1.0 - self._tokens) / self.cfg.drain_batches_per_s)
        elif room and self._data_due is not None:
            waits.append(self._data_due - self._store.clock())
        return max(0.0, min(waits))

    async def run(self) -> None:
        while True:
            delay = self.next_wake()
            if delay > 0:
                try:
                    async with asyncio.timeout(None if math.isinf(delay) else delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            self.wakes += 1
            await self.step()

    async def step(self) -> None:
        """Resend what is overdue, then cut new batches while there is room in flight."""
        async with self._stepping:
            await self._step()

    async def _step(self) -> None:
        if not self._link.connected.is_set():
            return
        self._retry_at = None
        analytics = self._consent().analytics
        held = self.over_budget()
        if held != self.holding:
            self.holding = held
            log.warning(
                "uplink %s: %d of %d bytes today",
                "holding" if held else "resuming",
                self.used_today(),
                self._budget,
            )
        if held:
            return
        try:
            if self.degraded() and analytics:
                folded = await self._store.call(
                    self._store.outbox.fold_pending, self.cfg.aggregate_window_s
                )
                if folded:
                    self._metrics.inc("signals_folded", folded)
            await self._resend_due()
            self._paced = False
            while len(self._in_flight) < self.cfg.max_in_flight:
                if not self._take_token():
                    self._paced = True  # woken again when the next token is in
                    break
                batch = await self._maybe_cut(analytics)
                if batch is None:
                    self._tokens += 1.0  # nothing cut: the token was not used
                    break
                await self._send(batch.seq, batch.payload, resend=False)
            if self._flush:
                pending = await self._store.call(self._store.outbox.pending)
                if not (pending.signals or pending.outcomes or pending.receipts):
                    self._flush = False
        except LinkDown as exc:
            log.debug("uplink paused: %s", exc)
            self._retry_at = self._timer() + RETRY_S  # or sooner: a connect wakes it
        except DiskFull as exc:
            # What is stored is still resent (above); cutting new batches waits for room.
            self._retry_at = self._timer() + RETRY_S
            self._metrics.inc("uplink_disk_full")
            self._faults.log("disk_full", "uplink cannot cut a batch: %s", exc)
        except StoreError as exc:  # an I/O error: rolled back, the next step tries again
            self._retry_at = self._timer() + RETRY_S
            self._metrics.inc("uplink_store_errors")
            self._faults.log("store_error", "uplink step failed, retrying: %s", exc)

    async def _resend_due(self) -> None:
        now = self._timer()
        due = [
            seq
            for seq, flight in sorted(self._in_flight.items())
            if flight.due is None or now >= flight.due
        ]
        if not due:
            return
        stored = {b.seq: b for b in await self._store.call(self._store.batches.stored)}
        for seq in due:
            batch = stored.get(seq)
            if batch is None:  # acked meanwhile
                self._in_flight.pop(seq, None)
                continue
            await self._send(seq, batch.payload, resend=True, attempts=batch.attempts)

    async def _maybe_cut(self, analytics: bool) -> StoredBatch | None:
        pending = await self._store.call(self._store.outbox.pending)
        self._data_due = None
        data = pending.signals + pending.outcomes + pending.aggregates if analytics else 0
        if data == 0 and pending.receipts == 0:
            return None
        age = self._store.clock() - pending.oldest if pending.oldest is not None else 0.0
        full = pending.signals >= self.cfg.batch_max_signals
        data_due = data > 0 and (full or age >= self.cfg.batch_max_age_s or self._flush)
        if data > 0 and not data_due and pending.oldest is not None:
            self._data_due = pending.oldest + self.cfg.batch_max_age_s
        if not data_due and pending.receipts == 0:
            return None
        return await self._store.call(
            self._store.batches.cut,
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
        aggregates: list[dict[str, Any]] | None = None,
    ) -> bytes:
        """The batch payload (runs on the store thread, inside the cut's transaction)."""
        drops = self._store.drops
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
                "aggregates": aggregates or [],
                "stats": {
                    "dropped": sum(drops.get(k, 0) for k in ("evicted", "expired", "withdrawn")),
                    "evicted": drops.get("evicted", 0),
                    "expired": drops.get("expired", 0),
                    "withdrawn": drops.get("withdrawn", 0),
                    "refused": drops.get("refused", 0),
                    "outbox_depth": self._store.depth,
                },
                "outbox_id": self._store.outbox_id or None,
            }
        )
        return encode_bounded(batch, self.cfg.compress_flag)

    async def _send(self, seq: int, payload: bytes, *, resend: bool, attempts: int = 0) -> None:
        flight = self._in_flight.setdefault(seq, Flight())
        flight.due = None
        await self._link.publish(self._topic, payload, qos=1)
        if self._in_flight.get(seq) is not flight:  # acked while we waited for the PUBACK
            return
        flight.sent = self._timer()
        flight.due = flight.sent + self.acks.resend_after(flight.backoff)
        flight.sends += 1
        flight.backoff += 1
        try:
            await self._store.call(self._store.batches.mark_sent, seq, len(payload), self.today())
        except StoreError as exc:  # sent all the same; only the attempt count and budget wait
            self._faults.log("mark_sent", "batch %d sent, not marked: %s", seq, exc)
        self._metrics.inc("uplink_bytes", len(payload))
        if resend and attempts > 0:
            self._metrics.inc("batches_resent")
            log.debug("resent batch %d (attempt %d)", seq, attempts + 1)
        else:
            self._metrics.inc("batches_sent")

    async def handle_ack(self, payload: bytes) -> None:
        """`down/ack`: delete the listed batches and their rows; unknown seqs are counted;
        an ack not signed for this device changes nothing (counted in `acks_forged`)."""
        try:
            obj = codec.decode_object(payload)
            ack, ignored = codec.validate_tolerant(obj, Ack)
        except ProtocolError as exc:
            self._metrics.inc("messages_bad")
            self._faults.log(exc.reason, "bad ack: %s", exc)
            return
        try:
            # an ack deletes rows: signed by an `acks` key, for this device (issue 14)
            self._verifier.verify(obj, role="acks")
            if ack.device_id != self.settings.device_id:
                raise SignatureError(f"ack for device {ack.device_id!r}")
        except ProtocolError as exc:
            self._metrics.inc("acks_forged")
            self._faults.log("ack_forged", "refused ack of %s: %s", ack.acks[:5], exc)
            return
        self._unknown.note("Ack", ignored)
        try:
            # only batches cut under the ack's outbox id: never another copy's (`identity`)
            result = await self._store.call(self._store.batches.ack, ack.acks, ack.outbox_id)
        except StoreError as exc:
            # A full disk without reserve, an I/O error: the batch stays and is resent, the
            # gateway acks it again.
            self._metrics.inc("acks_deferred")
            self._faults.log("disk_full_ack", "ack of %s deferred: %s", ack.acks, exc)
            return
        mine = self._store.outbox_id
        if not result.seqs and ack.outbox_id is not None and mine and ack.outbox_id != mine:
            # for another outbox: this device's wiped predecessor, or another copy of it
            self._metrics.inc("acks_other_outbox", len(ack.acks))
            return
        now = self._timer()
        for seq in result.seqs:
            flight = self._in_flight.pop(seq, None)
            if flight is not None and flight.sends == 1 and flight.sent is not None:
                self.acks.observe(now - flight.sent)  # sent once: the ack is this send's
        if result.seqs:  # the gateway is back at work: the others' backoff starts again
            fresh = now + self.acks.resend_after(0)  # (RFC 6298 5.3, restart on a new ack)
            for flight in self._in_flight.values():
                flight.backoff = 0
                if flight.due is not None and flight.due > fresh:
                    flight.due = fresh
        self._metrics.inc("batches_acked", len(result.seqs))
        self._metrics.inc("signals_acked", result.signals)
        self._metrics.inc("outcomes_acked", result.outcomes)
        self._metrics.inc("aggregated_acked", result.aggregated)
        unknown = len(set(ack.acks) - set(result.seqs))
        if unknown:
            self._metrics.inc("acks_unknown", unknown)
        if ack.refused:
            await self._refused(ack)
        if result.seqs:
            self._wake.set()

    async def _refused(self, ack: Ack) -> None:
        """Batches the gateway refused for good: resending them cannot help. What they named
        is quarantined, the rest goes back to the outbox and is sent in new batches."""
        refusals = [Refused(r.seq, r.reason, r.field) for r in ack.refused or ()]
        try:
            taken = await self._store.call(self._store.batches.refuse, refusals, ack.outbox_id)
        except StoreError as exc:  # kept and resent; the gateway refuses it again
            self._faults.log("disk_full_ack", "refusal of %s deferred: %s", ack.refused, exc)
            return
        for seq in taken:
            self._in_flight.pop(seq, None)
        if taken:
            self._metrics.inc("batches_refused", len(taken))
            first = ack.refused[0] if ack.refused else None
            self._faults.log(
                "batch_refused",
                "gateway refused batches %s for good (%s at %s); their items are quarantined",
                list(taken),
                first.reason if first else "?",
                first.field if first else "?",
            )
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
