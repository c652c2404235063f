"""Uplink handling: topic + payload -> a parsed message or a counted rejection; store, then ack.

Batches are group-committed: `Ingestor.feed` queues a parsed batch (bounded queue) and returns,
`Ingestor.run` stores everything waiting in ONE transaction and acks each batch only after
that commit. If the group fails, its batches are stored one by one, so one bad batch costs
only itself. A batch that is queued but not committed is not acked: the device sends it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cloud_gateway.db.ingest import (
    StoredBatch,
    record_rejection,
    record_state,
    store_batch_detail,
    store_batches,
)
from cloud_gateway.db.store import Database
from cloud_gateway.errors import GatewayError
from mqttlink.logs import OnceLogger
from protocol import codec
from protocol.envelopes import Ack, Batch, ClaimRequest, ModelUpdateReport, State
from protocol.errors import ProtocolError
from protocol.ids import utcnow
from protocol.topics import Topics

log = logging.getLogger(__name__)

REJECT_REASONS = (
    "malformed",
    "too_large",
    "invalid",
    "unsupported_version",
    "wrong_device",
    "unknown_topic",
)
MAX_WARNED = 10_000
GROUP_MAX = 64
"""At most this many batches in one transaction."""
QUEUE_MAX = 64
"""Parsed batches waiting for the next commit; when full, consumption waits (backpressure)."""
CLAIM_RESULT_TTL = timedelta(days=1)

SendNowait = Callable[[str, bytes], None]
"""send(topic, payload): hands a QoS 1 message to the MQTT client and returns at once;
raises a GatewayError when it cannot (the link is down, the client's queue is full)."""
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
class Parsed:
    """An uplink message that passed every check; `device_id` comes from the topic."""

    device_id: str
    message: Batch | ClaimRequest | State


@dataclass(frozen=True, slots=True)
class Rejected:
    """An uplink message refused for `reason`; `device_id` is the topic's, if it had one."""

    reason: str
    device_id: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to do: an empty retained payload clearing a device's state topic."""

    device_id: str


def decode_valid_batch(payload: bytes, max_compressed: int, max_decompressed: int) -> Batch | None:
    """Fast path of `codec.decode(payload, Batch, allow_zlib=True)` for a valid batch; None
    for anything else, which then takes the full path (so every rejection keeps its reason
    and message).

    The same steps and bounds, minus the nesting walk (`codec._depth`, ~40 % of decoding):
    every field of a `Batch` is a scalar or a list/dict of scalars (`extra="forbid"`), so a
    payload that validates nests at most 5 levels, below `codec.MAX_DEPTH`.
    """
    if not payload or len(payload) > max_compressed:
        return None
    try:
        raw = payload if payload[:1] == b"{" else codec.inflate(payload, max_decompressed)
        if len(raw) > max_decompressed:
            return None
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict):
            return None
        version = obj.get("v")
        if version != 1 or isinstance(version, bool):
            return None
        return Batch.model_validate(obj)
    except (ProtocolError, ValueError, RecursionError):
        # ValueError covers UnicodeDecodeError, JSONDecodeError and pydantic's ValidationError.
        return None


def parse_uplink(
    topics: Topics,
    topic: str,
    payload: bytes,
    *,
    max_compressed: int = codec.MAX_COMPRESSED,
    max_decompressed: int = codec.MAX_DECOMPRESSED,
) -> Parsed | Rejected | Ignored:
    """Pure: hostile bytes give a Rejected, never an exception. The topic names the device."""
    where = topics.parse_uplink(topic)
    if where is None:
        return Rejected("unknown_topic", None, f"not an uplink topic: {topic[:200]!r}")
    model: type[Batch | ClaimRequest | State]
    if where.kind == "batch":
        model = Batch
    elif where.kind == "claim":
        model = ClaimRequest
    else:
        if not payload:
            return Ignored(where.device_id)
        model = State
    try:
        message: Batch | ClaimRequest | State | None = None
        if model is Batch:
            message = decode_valid_batch(payload, max_compressed, max_decompressed)
        if message is None:
            message = codec.decode(
                payload,
                model,
                allow_zlib=where.kind == "batch",
                max_compressed=max_compressed,
                max_decompressed=max_decompressed,
            )
    except ProtocolError as exc:
        return Rejected(exc.reason, where.device_id, str(exc)[:300])
    except RecursionError:
        return Rejected("malformed", where.device_id, "payload nests too deeply")
    if message.device_id != where.device_id:
        return Rejected(
            "wrong_device",
            where.device_id,
            f"payload names device {message.device_id!r} on the topic of {where.device_id!r}",
        )
    return Parsed(where.device_id, message)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A parsed batch waiting for its commit; `done` resolves once it is stored or failed."""

    device_id: str
    batch: Batch
    done: asyncio.Future[None]


class AckBatcher:
    """Coalesces acks per device over a short window; publishes only what was committed.

    Acks go out through `send`, which hands a QoS 1 message to the MQTT client without
    waiting for the broker's PUBACK: an ack that is lost costs only a resend of the batch
    (acked again as a duplicate), and waiting would cost a round trip per device.
    """

    def __init__(
        self, topics: Topics, send: SendNowait, counters: Counter[str], delay_s: float
    ) -> None:
        self._topics = topics
        self._send = send
        self._counters = counters
        self._delay = delay_s
        self._pending: dict[tuple[str, str | None], list[int]] = {}
        self._wake = asyncio.Event()

    def add(self, device_id: str, seq: int, outbox_id: str | None = None) -> None:
        """Queue an ack for a batch that is committed (call only after the commit); the ack
        names the batch's outbox, so a device never takes it for one of its own seqs."""
        seqs = self._pending.setdefault((device_id, outbox_id), [])
        if seq not in seqs:
            seqs.append(seq)
        self._wake.set()

    async def run(self) -> None:
        """Flush loop (a named task of the gateway); cancel it, then call `flush()`."""
        while True:
            await self._wake.wait()
            if self._delay:
                await asyncio.sleep(self._delay)
            await self.flush()

    async def flush(self) -> None:
        self._wake.clear()
        pending, self._pending = self._pending, {}
        for (device_id, outbox_id), seqs in pending.items():
            for start in range(0, len(seqs), 1000):
                chunk = seqs[start : start + 1000]
                ack = Ack(acks=chunk, outbox_id=outbox_id)
                try:
                    self._send(self._topics.ack(device_id), codec.encode(ack))
                except GatewayError as exc:
                    # The device sends an unacknowledged batch again; we ack the duplicate.
                    self._counters["acks_failed"] += len(chunk)
                    log.debug("ack for %s not sent: %s", device_id, exc)
                else:
                    self._counters["acks_sent"] += len(chunk)


class Ingestor:
    """Handles one uplink message at a time; never raises for what a peer sent."""

    def __init__(
        self,
        topics: Topics,
        db: Database,
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
        group_max: int = GROUP_MAX,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self._submit_claim = submit_claim
        self._on_receipts = on_receipts
        self._on_birth = on_birth
        self._on_model_report = on_model_report
        self._on_facts = on_facts
        self._topics = topics
        self._db = db
        self._acks = acks
        self.counters = counters
        self._max_compressed = max_compressed
        self._max_decompressed = max_decompressed
        self._faults = OnceLogger(log, MAX_WARNED, suffix="")
        self._group_max = group_max
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_max)
        self._commit_lock = asyncio.Lock()

    @property
    def waiting(self) -> int:
        """Parsed batches waiting for the next group commit (`queue_max` at most)."""
        return self._queue.qsize()

    async def handle(self, topic: str, payload: bytes) -> Parsed | Rejected | Ignored:
        """Handle one message and return once it is done: a batch is committed (and its ack
        queued), or it failed and will not be acked."""
        result, pending = await self._dispatch(topic, payload)
        if pending is not None:
            await self.commit_waiting()
            await pending.done
        return result

    async def feed(self, topic: str, payload: bytes) -> Parsed | Rejected | Ignored:
        """Like `handle`, but a batch is only queued: `run` commits it, then acks it."""
        result, _ = await self._dispatch(topic, payload)
        return result

    async def run(self) -> None:
        """Group-commit loop (a named task of the gateway); on shutdown call `commit_waiting`."""
        while True:
            first = await self._queue.get()
            try:
                # Shielded: a commit under way finishes (and acks) even if this task is cancelled.
                await asyncio.shield(self._commit_group(first))
            except Exception:
                # A bug must not stop ingest: its batches are not acked and come again.
                log.exception("committing a group of batches failed")

    async def commit_waiting(self) -> None:
        """Commit every batch waiting in the queue now (groups of at most `group_max`), after
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
                if isinstance(result.message, Batch):
                    done = asyncio.get_running_loop().create_future()
                    pending = _Pending(result.device_id, result.message, done)
                    await self._queue.put(pending)
                else:
                    await self._accept(result.device_id, result.message)
        except GatewayError as exc:
            # Nothing acked: the device will send again. The loop goes on.
            self.counters["store_errors"] += 1
            log.error("could not handle a message on %s: %s", topic[:200], exc)  # noqa: TRY400
        return result, pending

    async def _commit_group(self, first: _Pending) -> None:
        """Store `first` and what else is waiting (up to `group_max`) in one transaction,
        then ack and report each batch. Never raises for a store failure."""
        async with self._commit_lock:
            group = [first]
            while len(group) < self._group_max and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                outcomes = await self._store_group(group)
                for pending, stored in zip(group, outcomes, strict=True):
                    await self._stored(pending, stored)
            finally:
                for pending in group:
                    if not pending.done.done():
                        pending.done.set_result(None)

    async def _store_group(self, group: list[_Pending]) -> list[StoredBatch | GatewayError]:
        items = [(p.device_id, p.batch) for p in group]
        try:
            return list(await self._db.call(store_batches, items, utcnow()))
        except GatewayError as exc:
            if len(group) == 1:
                return [exc]
            self.counters["group_commits_failed"] += 1
            log.warning("group commit of %d batches failed (%s); one by one", len(group), exc)
        outcomes: list[StoredBatch | GatewayError] = []
        for device_id, batch in items:
            try:
                outcomes.append(await self._db.call(store_batch_detail, device_id, batch, utcnow()))
            except GatewayError as exc:
                outcomes.append(exc)
        return outcomes

    async def _stored(self, pending: _Pending, stored: StoredBatch | GatewayError) -> None:
        """After the commit: count, ack, hand on receipts (or count the failure: no ack)."""
        device_id, batch = pending.device_id, pending.batch
        if isinstance(stored, GatewayError):
            self.counters["store_errors"] += 1
            log.error("could not store batch %s of %s: %s", batch.seq, device_id, stored)
            return
        if stored.new:
            self.counters["batches_stored"] += 1
            self.counters["signals_stored"] += stored.signals
            self.counters["aggregates_stored"] += stored.aggregates
            self.counters["outcomes_stored"] += stored.outcomes
            if self._on_facts is not None and (batch.signals or batch.aggregates):
                self._on_facts(device_id, batch)
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
        self._faults.log(
            (rejected.device_id, rejected.reason),
            "rejected %s message from device %s: %s",
            rejected.reason,
            rejected.device_id or "?",
            rejected.detail,
        )
        if rejected.device_id is not None:
            await self._db.call(record_rejection, rejected.device_id, utcnow())

    async def _accept(self, device_id: str, message: ClaimRequest | State) -> None:
        if isinstance(message, State):
            self.counters["states_received"] += 1
            await self._db.call(record_state, device_id, message, utcnow())
            if message.model_update is not None and self._on_model_report is not None:
                await self._on_model_report(device_id, message.model_update)
            if message.status == "online" and self._on_birth is not None:
                await self._on_birth(device_id)
        elif self._submit_claim is not None:
            await self._submit_claim(device_id, message)
        else:
            await self._claim(device_id, message)

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
        "bundles_pushed",
        "offers_pushed",
        "store_errors",
        "devices_erased",
        "device_commands_sent",
        "device_commands_confirmed",
    )
    out: dict[str, Any] = {name: counters[name] for name in names}
    out["rejected"] = rejected_by_reason(counters)
    return out
