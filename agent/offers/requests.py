"""A device's requests to the cloud that wait for a signed answer (claims, group buys, price
cuts): each stored before it is sent, published at QoS 1 and its attempt counted on its row;
each answer read only if signed by a pinned key and addressed to this device.

`Claims` and `Social` decide what to send and when (a claim waits for its wave); this is the
part that is the same for both: the send that leaves the request stored while the link is
down, and the reading of answers where a forged or misaddressed one is counted and logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from agent.config import AgentSettings
from agent.errors import LinkDown
from agent.link.downlink import Addressed, UnknownFields, read_addressed
from agent.link.transport import Transport
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from mqttlink.logs import OnceLogger
from protocol import codec
from protocol.signing import Verifier
from protocol.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Kind:
    """What differs between kinds of request: the topic (`Topics.claim_up`), the request's and
    its answer's names in logs, the counter of refused answers, the largest answer read."""

    topic: Callable[[Topics, str], str]
    name: str
    answer: str
    bad: str
    max_bytes: int


class Requests:
    """One kind of stored request: sent on its `up/` topic, answered by signed messages;
    `sent(request_id)` (a store table's method, run on the store thread) counts an attempt."""

    def __init__(
        self,
        kind: Kind,
        settings: AgentSettings,
        link: Transport,
        store: Store,
        verifier: Verifier,
        *,
        metrics: Metrics,
        sent: Callable[[str], None],
    ) -> None:
        self._kind = kind
        # sending: publish on the topic, then count the attempt on the stored row
        self._link = link
        self._topic = kind.topic(settings.topics, settings.device_id)
        self._store = store
        self._sent = sent
        # reading answers: signed by a pinned key, addressed to this device
        self._verifier = verifier
        self._device_id = settings.device_id
        self._metrics = metrics
        self._faults = OnceLogger(log)
        self._unknown = UnknownFields(metrics)
        metrics.counters.setdefault(kind.bad, 0)

    async def send(self, request_id: str, request: BaseModel) -> bool:
        """Publish a stored request and count the attempt on its row; False while the link
        is down (it stays pending: the caller's resend loop sends it again)."""
        try:
            await self._link.publish(self._topic, codec.encode(request), qos=1)
        except LinkDown as exc:
            log.debug("%s %s waits for the link: %s", self._kind.name, request_id, exc)
            return False
        await self._store.call(self._sent, request_id)
        return True

    def read(self, payload: bytes, model: type[Addressed]) -> Addressed | None:
        """An answer verified, validated and addressed to this device; None (refused and
        counted) otherwise."""
        return read_addressed(
            payload,
            model,
            self._verifier,
            max_bytes=self._kind.max_bytes,
            device_id=self._device_id,
            unknown=self._unknown,
            refuse=self.refuse,
        )

    def refuse(self, reason: str, detail: str) -> None:
        """Count a refused answer; logged at WARNING the first time per `reason`."""
        self._metrics.inc(self._kind.bad)
        self._faults.log(reason, "refused %s: %s", self._kind.answer, detail)
