"""Uplink handling: a parsed message stored in a group commit, then acked or followed up.

Batches and device states (births, last wills) are group-committed: `Ingestor.feed` queues a
parsed message (bounded queue) and returns, `Ingestor.run` stores everything waiting in ONE
transaction and acks each batch only after that commit. If the group fails, its messages are
stored one by one, so one bad batch costs only itself. A batch that is queued but not
committed is not acked: the device sends it again. A storm of births (a broker restart) thus
costs one transaction per group, not one fsync per device; of each device's states in a group
only the newest is stored, and never over a newer one (`db/ingest.py`, `state_order`). What a
birth sets off (re-sends of what the device is owed, the model registry's health report) runs
after the commit, in a follow-up loop beside the commits, so a storm does not hold up acks.
Parsing is `ingest/parse.py`, acks `ingest/acks.py` (both re-exported here).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.ingest import (
    StateItem,
    StoredBatch,
    newest_states,
    record_rejection,
    record_states,
    store_batch_detail,
    store_uplink,
)
from cloud_gateway.errors import GatewayError, StoreFull, StoreUnavailable
from cloud_gateway.ingest.acks import AckBatcher, SendNowait
from cloud_gateway.ingest.parse import (
    Ignored,
    Parsed,
    Rejected,
    decode_valid_batch,
    parse_uplink,
)
from mqttlink.logs import OnceLogger
from protocol import codec
from protocol.envelopes import Batch, ClaimRequest, ModelUpdateReport, State
from protocol.ids import utcnow
from protocol.topics import Topics

__all__ = [
    "AckBatcher",
    "Ignored",
    "Ingestor",
    "Parsed",
    "Rejected",
    "SendNowait",
    "decode_valid_batch",
    "parse_uplink",
]

log = logging.getLogger(__name__)

REJECT_REASONS = (
    "malformed",
    "non_finite",
    "too_large",
    "invalid",
    "unsupported_version",
    "wrong_device",
    "unknown_topic",
)
MAX_WARNED = 10_000
MAX_BUG_KINDS = 64
"""Kinds of unexpected store failure logged with a traceback (the first of each)."""
GROUP_MAX = 64
"""At most this many batches (and as many states) in one transaction."""
QUEUE_MAX = 64
"""Parsed messages waiting for the next commit; when full, consumption waits (backpressure)."""
FOLLOW_UP_MAX = 4096
"""Stored states waiting for their follow-up (births' re-sends, model reports); when full,
the commit loop waits."""
CLAIM_RESULT_TTL = timedelta(days=1)

SubmitClaim = Callable[[str, ClaimRequest], Awaitable[None]]
"""Hands a claim to the claim desk (`cloud_gateway.claims.desk`)."""
OnReceipts = Callable[[str, list[str]], Awaitable[None]]
"""Called with a stored batch's receipts (ids of device bundles the device holds)."""
OnBirth = Callable[[str], Awaitable[None]]
"""Called after a device's `online` state is recorded (re-send what is outstanding)."""
OnModelReport = Callable[[str, ModelUpdateReport], Awaitable[None]]
"""Called with a state's model update report (the model registry's rollout health)."""
OnFacts = Callable[[str, Batch], None]
"""Called (must not block) after a new batch with signals or aggregates is stored: the
device's targeting facts may have changed."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A parsed batch or state waiting for its commit; `done` resolves once it is stored or
    failed. `received_at`: when it came (a state without `at` is ordered by it)."""

    device_id: str
    message: Batch | State
    done: asyncio.Future[None]
    received_at: datetime = field(default_factory=utcnow)


class Ingestor:
    """Handles one uplink message at a time; never raises for what a peer sent."""

    def __init__(
        self,
        topics: Topics,
        db: Backend[Session],
        *,
        acks: AckBatcher,
        counters: Counter[str],
        max_compressed: int = codec.MAX_COMPRESSED,
        max_decompressed: int = codec.MAX_DECOMPRESSED,
        submit_claim: SubmitClaim | None = None,
        on_receipts: OnReceipts | None = None,
        on_birth: OnBirth | None = None,
        on_model_report: OnModelReport | None = None,
        on_facts: OnFacts | None = None,
        on_members: Callable[[tuple[str, ...]], None] | None = None,
        group_max: int = GROUP_MAX,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self._submit_claim = submit_claim
        self._on_receipts = on_receipts
        self._on_birth = on_birth
        self._on_model_report = on_model_report
        self._on_facts = on_facts
        self._on_members = on_members
        self._topics = topics
        self._db = db
        self._acks = acks
        self.counters = counters
        self._max_compressed = max_compressed
        self._max_decompressed = max_decompressed
        self._faults = OnceLogger(log, MAX_WARNED, suffix="")
        self._bugs_logged: set[str] = set()
        self._group_max = group_max
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_max)
        self._follow_ups: asyncio.Queue[tuple[str, State | None]] = asyncio.Queue(
            maxsize=FOLLOW_UP_MAX
        )
        self._commit_lock = asyncio.Lock()

    @property
    def waiting(self) -> int:
        """Parsed batches and states waiting for the next group commit (`queue_max` at most)."""
        return self._queue.qsize()

    async def handle(self, topic: str, payload: bytes) -> Parsed | Rejected | Ignored:
        """Handle one message and return once it is done: a batch is committed (and its ack
        queued), or it failed and will not be acked; a state is stored and followed up."""
        result, pending = await self._dispatch(topic, payload)
        if pending is not None:
            await self.commit_waiting()
            await pending.done
            while not self._follow_ups.empty():
                await self._follow_up(*self._follow_ups.get_nowait())
        return result

    async def feed(self, topic: str, payload: bytes) -> Parsed | Rejected | Ignored:
        """Like `handle`, but a batch or state is only queued: `run` commits it, then acks
        it (a batch) or follows it up (a state)."""
        result, _ = await self._dispatch(topic, payload)
        return result

    async def run(self) -> None:
        """Group-commit loop and the states' follow-up loop (one named task of the gateway);
        on shutdown call `commit_waiting`."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow_up_loop(), name="gateway-ingest-follow-up")
            while True:
                first = await self._queue.get()
                try:
                    # Shielded: a commit under way finishes (and acks) even if cancelled.
                    await asyncio.shield(self._commit_group(first))
                except Exception:
                    # A bug must not stop ingest: its batches are not acked and come again.
                    log.exception("committing a group of uplink messages failed")

    async def commit_waiting(self) -> None:
        """Commit everything waiting in the queue now (groups of at most `group_max`), after
        the commit under way, if any (shutdown: then its acks are flushed too)."""
        async with self._commit_lock:
            pass
        while not self._queue.empty():
            await self._commit_group(self._queue.get_nowait())

    async def _dispatch(
        self, topic: str, payload: bytes
    ) -> tuple[Parsed | Rejected | Ignored, _Pending | None]:
        self.counters["messages_received"] += 1
        result = parse_uplink(
            self._topics,
            topic,
            payload,
            max_compressed=self._max_compressed,
            max_decompressed=self._max_decompressed,
        )
        pending: _Pending | None = None
        try:
            if isinstance(result, Rejected):
                await self._reject(result)
            elif isinstance(result, Parsed):
                message = result.message
                if isinstance(message, Batch | State):
                    if isinstance(message, State):
                        self.counters["states_received"] += 1
                    done = asyncio.get_running_loop().create_future()
                    pending = _Pending(result.device_id, message, done)
                    await self._queue.put(pending)
                elif self._submit_claim is not None:
                    await self._submit_claim(result.device_id, message)
                else:
                    await self._claim(result.device_id, message)
        except GatewayError as exc:
            # Nothing acked: the device will send again. The loop goes on.
            self.counters["store_errors"] += 1
            if isinstance(exc, StoreUnavailable):  # a full disk: once, not once a message
                self._faults.log(("store", type(exc).__name__), "uplink not handled: %s", exc)
            else:
                log.error("could not handle a message on %s: %s", topic[:200], exc)  # noqa: TRY400
        return result, pending

    async def _commit_group(self, first: _Pending) -> None:
        """Store `first` and what else is waiting (up to `group_max`) in one transaction,
        then ack and report each batch, and queue each state's follow-up. Never raises for
        a store failure."""
        async with self._commit_lock:
            group = [first]
            while len(group) < self._group_max and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                batches = [p for p in group if isinstance(p.message, Batch)]
                states = [
                    (p.device_id, p.message, p.received_at)
                    for p in group
                    if isinstance(p.message, State)
                ]
                outcomes, states_ok = await self._store_group(batches, states)
                for pending, stored in zip(batches, outcomes, strict=True):
                    await self._stored(pending, stored)
                if states_ok:
                    await self._states_stored(states)
            finally:
                for pending in group:
                    if not pending.done.done():
                        pending.done.set_result(None)

    async def _store_group(
        self, group: list[_Pending], states: list[StateItem]
    ) -> tuple[list[StoredBatch | GatewayError], bool]:
        """The batches' outcomes, and whether the states were stored."""
        items = [(p.device_id, p.message) for p in group if isinstance(p.message, Batch)]
        try:
            return list(await self._db.call(store_uplink, items, states, utcnow())), True
        except StoreUnavailable as exc:
            # The disk is full or the store cannot write now: one by one would fail the same
            # way. Nothing is acked; devices keep their batches and send them again.
            self.counters["store_full" if isinstance(exc, StoreFull) else "store_unavailable"] += 1
            self.counters["store_errors"] += len(states)
            self._faults.log(("store", type(exc).__name__), "uplink not stored: %s", exc)
            return [exc] * len(items), False
        except Exception as exc:  # noqa: BLE001 - a bug is logged and isolated below
            failure = self._failure(exc, "a group commit")
            if len(items) + len(states) == 1:
                self.counters["store_errors"] += len(states)
                return [failure] * len(items), False
            self.counters["group_commits_failed"] += 1
            log.warning(
                "group commit of %d batches and %d states failed (%s); one by one",
                len(items),
                len(states),
                failure,
            )
        # One by one: a batch that cannot be stored (a poisoned one, even by a bug) costs only
        # itself; it is not acked, and the others behind it are.
        outcomes: list[StoredBatch | GatewayError] = []
        for device_id, batch in items:
            try:
                outcomes.append(await self._db.call(store_batch_detail, device_id, batch, utcnow()))
            except Exception as exc:  # noqa: BLE001 - logged by `_failure`, counted by `_stored`
                outcomes.append(self._failure(exc, f"batch {batch.seq} of {device_id}"))
        if not states:
            return outcomes, True
        try:
            await self._db.call(record_states, states, utcnow())
        except GatewayError as exc:
            # States are not acked: the retained one comes again on the next subscribe.
            self.counters["store_errors"] += len(states)
            log.error("could not store %d device states: %s", len(states), exc)  # noqa: TRY400
            return outcomes, False
        return outcomes, True

    def _failure(self, exc: Exception, what: str) -> GatewayError:
        """A store failure as a GatewayError; anything else is a bug: logged with its
        traceback (once per kind), then handled as a failure of `what` only."""
        if isinstance(exc, GatewayError):
            return exc
        kind = type(exc).__name__
        if kind not in self._bugs_logged and len(self._bugs_logged) < MAX_BUG_KINDS:
            self._bugs_logged.add(kind)
            log.error("storing %s failed (a bug): isolated, not acked", what, exc_info=exc)
        else:
            log.debug("storing %s failed: %r", what, exc)
        return GatewayError(f"storing {what} failed: {exc!r}")

    async def _states_stored(self, states: list[StateItem]) -> None:
        """After the commit: each model report, and each device's birth if its newest state
        in the group says online, go to the follow-up loop."""
        self.counters["states_stored"] += len(states)
        if self._on_model_report is not None:
            for device_id, state, _ in states:
                if state.model_update is not None:
                    await self._follow_ups.put((device_id, state))
        if self._on_birth is not None:
            for device_id, (_, state) in newest_states(states).items():
                if state.status == "online":
                    await self._follow_ups.put((device_id, None))

    async def _follow_up_loop(self) -> None:
        while True:
            device_id, state = await self._follow_ups.get()
            try:
                await self._follow_up(device_id, state)
            except Exception:
                # A bug in a follow-up must not stop ingest; the re-send loops cover births.
                log.exception("following up the state of %s failed", device_id)

    async def _follow_up(self, device_id: str, state: State | None) -> None:
        """A model report (`state`) or a birth (None): what it sets off, after its commit."""
        try:
            if state is not None and state.model_update is not None:
                if self._on_model_report is not None:
                    await self._on_model_report(device_id, state.model_update)
            elif self._on_birth is not None:
                await self._on_birth(device_id)
        except GatewayError as exc:
            self.counters["store_errors"] += 1
            log.error("could not follow up the state of %s: %s", device_id, exc)  # noqa: TRY400

    async def _stored(self, pending: _Pending, stored: StoredBatch | GatewayError) -> None:
        """After the commit: count, ack, hand on receipts (or count the failure: no ack)."""
        device_id, batch = pending.device_id, pending.message
        if not isinstance(batch, Batch):
            return
        if isinstance(stored, GatewayError):
            self.counters["store_errors"] += 1
            if not isinstance(stored, StoreUnavailable):  # that one is logged once a group
                log.error("could not store batch %s of %s: %s", batch.seq, device_id, stored)
            return
        if stored.new:
            self.counters["batches_stored"] += 1
            self.counters["signals_stored"] += stored.signals
            self.counters["aggregates_stored"] += stored.aggregates
            self.counters["outcomes_stored"] += stored.outcomes
            if self._on_facts is not None and (batch.signals or batch.aggregates):
                self._on_facts(device_id, batch)
            if stored.members and self._on_members is not None:
                self._on_members(stored.members)  # their points changed: statuses owed
        else:
            self.counters["batches_duplicate"] += 1
        self._acks.add(device_id, batch.seq, batch.outbox_id)
        if batch.receipts and self._on_receipts is not None:
            try:
                await self._on_receipts(device_id, list(batch.receipts))
            except GatewayError as exc:
                self.counters["store_errors"] += 1
                log.error("receipts of %s not handled: %s", device_id, exc)  # noqa: TRY400

    async def _reject(self, rejected: Rejected) -> None:
        self.counters[f"rejected_{rejected.reason}"] += 1
        if rejected.seq is not None and rejected.device_id is not None:
            self._acks.refuse(
                rejected.device_id,
                rejected.seq,
                rejected.outbox_id,
                rejected.reason,
                rejected.field,
            )
        self._faults.log(
            (rejected.device_id, rejected.reason),
            "rejected %s message from device %s: %s",
            rejected.reason,
            rejected.device_id or "?",
            rejected.detail,
        )
        if rejected.device_id is not None:
            await self._db.call(record_rejection, rejected.device_id, utcnow())

    async def _claim(self, device_id: str, claim: ClaimRequest) -> None:
        """Without a claim desk (`cloud_gateway.claims.desk`) a claim stays unanswered; the
        device claims again later."""
        self.counters["claims_unhandled"] += 1
        log.warning("claim %s of %s not handled: no claim desk", claim.id, device_id)


def rejected_by_reason(counters: Counter[str]) -> dict[str, int]:
    return {reason: counters[f"rejected_{reason}"] for reason in REJECT_REASONS}


def public_counters(counters: Counter[str]) -> dict[str, Any]:
    """Gateway-wide counters as `GET /v1/stats` shows them."""
    names = (
        "messages_received",
        "uplink_overflow",
        "batches_stored",
        "batches_duplicate",
        "signals_stored",
        "aggregates_stored",
        "outcomes_stored",
        "states_received",
        "claims_received",
        "claims_granted",
        "claims_refused",
        "claims_duplicate",
        "device_bundles_sent",
        "device_bundle_receipts",
        "acks_sent",
        "acks_failed",
        "refusals_sent",
        "bundles_pushed",
        "offers_pushed",
        "store_errors",
        "store_full",
        "store_unavailable",
        "pushes_quarantined",
        "commands_quarantined",
        "loop_restarts",
        "devices_erased",
        "device_commands_sent",
        "device_commands_confirmed",
        "social_received",
        "social_rejected",
        "social_started",
        "social_joined",
        "social_formed",
        "social_helped",
        "social_refused",
        "social_rate_limited",
        "social_duplicate",
        "social_pushes_sent",
    )
    out: dict[str, Any] = {name: counters[name] for name in names}
    out["rejected"] = rejected_by_reason(counters)
    return out
