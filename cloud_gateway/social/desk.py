"""The social desk: decide group and cut requests in batches, sign, answer, push, close due.

A request on `up/social` is queued (bounded), then a worker decides what is waiting in one
transaction (`social.decide.social_batch`) and publishes each signed `SocialState` on
`down/social`, then the pushes owed to other members, deleting each once sent. Nothing is
answered before it is committed; a request lost to a crash is sent again by the device (its
outbox resends until answered) and a repeated key gets the stored answer. `run_closer` closes
groups and cuts whose window is over and re-sends pushes a crash left behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from cloud_gateway.db.social import (
    Push,
    SocialAnswer,
    close_due,
    pushes_owed,
    pushes_sent,
)
from cloud_gateway.errors import GatewayError
from cloud_gateway.runtime.wiring import Service, Wiring
from cloud_gateway.social.decide import social_batch
from protocol import codec
from protocol.errors import ProtocolError
from protocol.ids import new_id, utcnow
from protocol.signing import SigningKey
from protocol.social import SocialRequest, SocialState

log = logging.getLogger(__name__)

STATE_TTL = timedelta(days=1)
QUEUE_MAX = 10_000
PUBLISH_CONCURRENCY = 64
RESEND_AFTER = timedelta(seconds=5)


def signed_state(
    device_id: str, request_id: str | None, fields: dict[str, Any], *, signer: SigningKey
) -> dict[str, Any]:
    """The signed wire `SocialState` for one member (signed like claim results)."""
    now = utcnow()
    state = SocialState(
        id=new_id(),
        device_id=device_id,
        request_id=request_id,
        issued_at=now,
        expires_at=now + STATE_TTL,
        **fields,
    )
    return signer.sign(state.to_wire())


class SocialDesk(Service):
    """Owns the social queue and its worker (`run`) and the closer (`run_closer`)."""

    def __init__(
        self, wiring: Wiring, *, batch_max: int = 256, clock: Callable[[], datetime] = utcnow
    ) -> None:
        """`clock`: the time windows are decided on (tests move it past a group's window)."""
        super().__init__(wiring)
        self._clock = clock
        self._batch_max = max(1, batch_max)
        self._queue: asyncio.Queue[tuple[str, SocialRequest]] = asyncio.Queue(QUEUE_MAX)

    def _make(
        self, device_id: str, request_id: str | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        return signed_state(device_id, request_id, fields, signer=self._signer)

    async def handle(self, topic: str, payload: bytes) -> bool:
        """False for any topic but `up/social`; a social request is validated and queued, or
        counted and dropped (a bad message never stops the consumer): True."""
        device_id = self._topics.parse_social(topic)
        if device_id is None:
            return False
        self._counters["social_received"] += 1
        try:
            request = codec.decode(payload, SocialRequest)
        except ProtocolError as exc:
            self._counters["social_rejected"] += 1
            log.warning("social request from %s refused: %s", device_id, exc)
            return True
        if request.device_id != device_id:
            self._counters["social_rejected"] += 1
            log.warning("social request names %s on the topic of %s", request.device_id, device_id)
            return True
        await self._queue.put((device_id, request))
        return True

    async def decide(self, batch: list[tuple[str, SocialRequest]]) -> list[SocialAnswer]:
        """Decide a batch now (the worker's step; tests and benches call it directly)."""
        answers, pushes = await self._db.call(social_batch, batch, self._make, self._clock())
        for answer in answers:
            self._counters[f"social_{answer.outcome}"] += 1
        for start in range(0, len(answers), PUBLISH_CONCURRENCY):  # QoS 1: overlap PUBACKs
            chunk = answers[start : start + PUBLISH_CONCURRENCY]
            await asyncio.gather(*(self._send(a.device_id, a.result) for a in chunk))
        await self.push(pushes)
        return answers

    async def push(self, pushes: list[Push]) -> None:
        """Send owed states, then forget those sent (the rest are sent again later)."""
        sent: list[str] = []
        for start in range(0, len(pushes), PUBLISH_CONCURRENCY):
            chunk = pushes[start : start + PUBLISH_CONCURRENCY]
            done = await asyncio.gather(*(self._send(p.device_id, p.payload) for p in chunk))
            sent += [p.id for p, ok in zip(chunk, done, strict=True) if ok]
        if sent:
            self._counters["social_pushes_sent"] += len(sent)
            await self._db.call(pushes_sent, sent)

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.decide(batch)
            except GatewayError as exc:
                # Nothing decided: the devices send again with the same keys.
                self._counters["store_errors"] += 1
                log.error("could not decide %d social requests: %s", len(batch), exc)  # noqa: TRY400

    async def close_once(self) -> int:
        """Close what is due and re-send pushes left behind; how many pushes were owed."""
        now = self._clock()
        due = await self._db.call(close_due, self._make, now)
        left = await self._db.call(pushes_owed, now - RESEND_AFTER)
        seen = {p.id for p in due}
        owed = due + [p for p in left if p.id not in seen]
        await self.push(owed)
        return len(owed)

    async def run_closer(self, interval_s: float = 1.0) -> None:
        while True:
            try:
                await self.close_once()
            except GatewayError as exc:
                self._counters["store_errors"] += 1
                log.error("could not close due groups and cuts: %s", exc)  # noqa: TRY400
            await asyncio.sleep(interval_s)

    async def _send(self, device_id: str, payload: dict[str, Any]) -> bool:
        try:
            await self._publish(
                self._topics.social_down(device_id), codec.encode_dict(payload), False
            )
        except GatewayError as exc:
            log.debug("social state for %s not sent: %s", device_id, exc)
            return False
        return True
