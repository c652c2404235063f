"""Signed commands on `down/cmd`: verified (signature, expiry, device, replay), applied once.

A command is obeyed only when signed by a pinned key, unexpired, addressed to this device
and not seen before; a re-sent command already applied is confirmed again (the gateway
re-sends until it sees the receipt) and not applied twice. `forget` (erasure, DESIGN.md
guarantee 4) deletes the device's usage data (`agent.store.erasure`); consent stays as the
user set it, keys, trust and received offers stay. Other kinds are counted and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from agent.link.downlink import UnknownFields, read_addressed
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from mqttlink.logs import OnceLogger
from protocol.envelopes import Command
from protocol.signing import Verifier

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16 * 1024
COUNTERS = (
    "commands_applied",
    "commands_duplicate",
    "commands_bad",
    "commands_unsupported",
    "forgets",
)

OnForget = Callable[[dict[str, int]], Awaitable[None]]
"""Called after a `forget` is committed, with the rows deleted per table."""


class Commands:
    """The device side of `down/cmd`."""

    def __init__(
        self,
        device_id: str,
        store: Store,
        verifier: Verifier,
        metrics: Metrics,
        *,
        on_forget: OnForget,
    ) -> None:
        self._device_id = device_id
        self._store = store
        self._verifier = verifier
        self._metrics = metrics
        self._on_forget = on_forget
        self._faults = OnceLogger(log)
        self._unknown = UnknownFields(metrics)
        for name in COUNTERS:
            metrics.counters.setdefault(name, 0)

    def _bad(self, reason: str, detail: str) -> None:
        self._metrics.inc("commands_bad")
        self._faults.log(reason, "refused command: %s", detail)

    async def handle(self, payload: bytes) -> bool:
        """Verify and apply one command; True when a receipt waits to be sent."""
        command = read_addressed(
            payload,
            Command,
            self._verifier,
            max_bytes=MAX_COMMAND_BYTES,
            device_id=self._device_id,
            unknown=self._unknown,
            refuse=self._bad,
        )
        if command is None:
            return False
        if await self._store.call(self._store.offers.seen, command.id):
            await self._store.call(
                self._store.offers.add_receipt, command.id
            )  # confirm again, apply nothing
            self._metrics.inc("commands_duplicate")
            return True
        if command.kind != "forget":
            self._metrics.inc("commands_unsupported")
            self._faults.log(
                "unsupported", "command %s of kind %s ignored", command.id, command.kind
            )
            return False
        removed = await self._store.call(self._store.erasure.forget, command.id)
        self._metrics.inc("commands_applied")
        self._metrics.inc("forgets")
        log.info("forget %s: device data erased (%s)", command.id, removed)
        await self._on_forget(removed)
        return True
