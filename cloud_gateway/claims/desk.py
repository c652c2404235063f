"""Flash-sale claims: queue, decide in batched transactions (atomic stock), sign, answer.

A claim on `up/claim` is queued (bounded: the MQTT consumer waits when it is full), then a
worker takes what is waiting (up to `batch_max`) and decides it in one SQLite transaction
(`campaign_store.claim_batch`), then publishes each signed `ClaimResult` on `down/claim`.
Nothing is answered before its decision is committed; a claim lost to a crash before the
commit is claimed again by the device (it retries until it has an answer), and a repeated
idempotency key always gets the stored answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from cloud_gateway.db.claims import ClaimAnswer, claim_batch
from cloud_gateway.errors import GatewayError
from cloud_gateway.runtime.wiring import Service, Wiring
from protocol import codec
from protocol.envelopes import ClaimRequest, ClaimResult
from protocol.ids import new_id, utcnow
from protocol.signing import SigningKey

log = logging.getLogger(__name__)

CLAIM_RESULT_TTL = timedelta(days=1)
QUEUE_MAX = 10_000
PUBLISH_CONCURRENCY = 64


def signed_result(
    device_id: str,
    claim: ClaimRequest,
    granted: bool,
    code: str | None,
    reason: str,
    *,
    signer: SigningKey,
) -> dict[str, Any]:
    """The signed wire `ClaimResult` of one decision (`claim_batch`'s `make_result`)."""
    now = utcnow()
    answer = ClaimResult(
        id=new_id(),
        claim_id=claim.id,
        device_id=device_id,
        offer_id=claim.offer_id,
        granted=granted,
        code=code,
        reason=reason,
        issued_at=now,
        expires_at=now + CLAIM_RESULT_TTL,
    )
    return signer.sign(answer.to_wire())


class ClaimDesk(Service):
    """Owns the claim queue and its worker (`run`, a named task of the gateway)."""

    def __init__(
        self,
        wiring: Wiring,
        *,
        batch_max: int = 256,
        on_sold_out: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(wiring)
        self._batch_max = max(1, batch_max)
        self._on_sold_out = on_sold_out
        self._queue: asyncio.Queue[tuple[str, ClaimRequest]] = asyncio.Queue(QUEUE_MAX)

    async def submit(self, device_id: str, claim: ClaimRequest) -> None:
        """Queue a claim (waits while the queue is full: backpressure on the consumer)."""
        self._counters["claims_received"] += 1
        await self._queue.put((device_id, claim))

    async def run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                make = partial(signed_result, signer=self._signer)
                answers = await self._db.call(claim_batch, batch, make, utcnow())
            except GatewayError as exc:
                # Nothing decided: the devices claim again with the same keys.
                self._counters["store_errors"] += 1
                log.error("could not decide %d claims: %s", len(batch), exc)  # noqa: TRY400
                continue
            if self._on_sold_out is not None and any(a.sold_out for a in answers):
                # committed: the devices are told before the batch's answers go out (a live
                # sale's crowd stops claiming sooner, issue 19; a marker is stored)
                self._counters["offers_sold_out"] += 1
                self._on_sold_out()
            for start in range(0, len(answers), PUBLISH_CONCURRENCY):  # QoS 1: overlap PUBACKs
                chunk = answers[start : start + PUBLISH_CONCURRENCY]
                await asyncio.gather(*(self._answer(a) for a in chunk))

    async def _answer(self, answer: ClaimAnswer) -> None:
        if answer.new:
            self._counters["claims_granted" if answer.granted else "claims_refused"] += 1
        else:
            self._counters["claims_duplicate"] += 1
        try:
            await self._publish(
                self._topics.claim_down(answer.device_id), codec.encode_dict(answer.result), False
            )
        except GatewayError as exc:
            log.debug("claim result for %s not sent: %s", answer.device_id, exc)
