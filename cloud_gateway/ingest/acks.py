"""Acks of stored batches: coalesced per device over a short window, sent only after the
commit, through a send that does not wait for the broker; with them, the refusals of batches
refused for good (`Ack.refused`, issue 13). Every ack is signed for its device (issue 14): an
ack deletes outbox rows, so a device refuses one that is not."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from cloud_gateway.errors import GatewayError
from protocol import codec
from protocol.envelopes import Ack, Refusal
from protocol.ids import utcnow
from protocol.signing import SigningKey
from protocol.topics import Topics

log = logging.getLogger(__name__)

ACK_TTL = timedelta(days=30)
"""How long a signed ack stays valid. Long on purpose: a device whose clock is off must
still take its acks, and a replayed ack names seqs the device has already deleted (a seq
is never reused within an outbox, and the ack is bound to its device and outbox)."""

SendNowait = Callable[[str, bytes], None]
"""send(topic, payload): hands a QoS 1 message to the MQTT client and returns at once;
raises a GatewayError when it cannot (the link is down, the client's queue is full)."""


class AckBatcher:
    """Coalesces acks per device over a short window; publishes only what was committed.

    Acks go out through `send`, which hands a QoS 1 message to the MQTT client without
    waiting for the broker's PUBACK: an ack that is lost costs only a resend of the batch
    (acked again as a duplicate), and waiting would cost a round trip per device.
    """

    def __init__(
        self,
        topics: Topics,
        send: SendNowait,
        counters: Counter[str],
        delay_s: float,
        *,
        signer: SigningKey,
    ) -> None:
        self._topics = topics
        self._signer = signer
        self._send = send
        self._counters = counters
        self._delay = delay_s
        self._pending: dict[tuple[str, str | None], list[int]] = {}
        self._refused: dict[tuple[str, str | None], dict[int, Refusal]] = {}
        self._wake = asyncio.Event()

    def add(self, device_id: str, seq: int, outbox_id: str | None = None) -> None:
        """Queue an ack for a batch that is committed (call only after the commit); the ack
        names the batch's outbox, so a device never takes it for one of its own seqs."""
        seqs = self._pending.setdefault((device_id, outbox_id), [])
        if seq not in seqs:
            seqs.append(seq)
        self._wake.set()

    def refuse(
        self, device_id: str, seq: int, outbox_id: str | None, reason: str, field: str | None
    ) -> None:
        """Queue a refusal for a batch refused for good (`Ack.refused`): its device may
        drop it instead of sending it again forever."""
        refusal = Refusal(seq=seq, reason=reason, field=field[:200] if field else None)
        self._refused.setdefault((device_id, outbox_id), {})[seq] = refusal
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
        refused, self._refused = self._refused, {}
        for key, seqs in pending.items():
            self._send_acks(key, seqs, list(refused.pop(key, {}).values()))
        for key, refusals in refused.items():
            self._send_acks(key, [], list(refusals.values()))

    def _send_acks(
        self, key: tuple[str, str | None], seqs: list[int], refusals: list[Refusal]
    ) -> None:
        device_id, outbox_id = key
        for start in range(0, max(len(seqs), len(refusals)), 1000):
            chunk = seqs[start : start + 1000]
            refused = refusals[start : start + 1000] or None
            ack = Ack(
                acks=chunk,
                outbox_id=outbox_id,
                refused=refused,
                device_id=device_id,
                expires_at=utcnow() + ACK_TTL,
            )
            payload = codec.dumps(self._signer.sign(ack.to_wire()))
            try:
                self._send(self._topics.ack(device_id), payload)
            except GatewayError as exc:
                # The device sends an unacknowledged batch again; we ack the duplicate.
                self._counters["acks_failed"] += len(chunk)
                self._counters["refusals_failed"] += len(refused or ())
                log.debug("ack for %s not sent: %s", device_id, exc)
            else:
                self._counters["acks_sent"] += len(chunk)
                self._counters["refusals_sent"] += len(refused or ())
