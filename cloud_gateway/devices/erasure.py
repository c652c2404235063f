"""Erasure (`DELETE /v1/devices/{id}`): delete what the gateway holds, tell the device to forget.

The gateway deletes the device's signals, aggregates, outcomes, logged features, batches,
claims, device-addressed pushes and registry row in one transaction, and records a signed
`forget` command for the device in the same transaction. Stock stays correct: a coupon
granted to the device stays consumed, so its grant row is kept with the device id replaced
by a random tombstone (`initial - stock` still equals the grants). The command is sent on
`dev/{id}/down/cmd` and re-sent (on each birth and periodically, like device bundles) until
the device's receipt arrives on an uplink batch; then whatever arrived in between (batches
the device sent before it forgot) is deleted too. What stays: the command row (device id,
times) until then and the audit entry, which name the device but hold none of its data.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from cloud_gateway.db.commands import (
    confirm_commands,
    erase_device,
    mark_commands_sent,
    outstanding_commands,
    quarantine_command,
    replace_payload,
)
from cloud_gateway.db.rows import json_object
from cloud_gateway.errors import GatewayError
from cloud_gateway.runtime.wiring import Service, Wiring
from protocol import codec
from protocol.envelopes import Command
from protocol.ids import new_id, parse_time, utcnow

log = logging.getLogger(__name__)

COMMAND_TTL = timedelta(days=30)
"""A forget command expires after this; one still unconfirmed is re-signed before then."""


class DeviceErasure(Service):
    """Erases devices at the gateway and delivers their signed `forget` commands."""

    def __init__(self, wiring: Wiring, *, ttl: timedelta = COMMAND_TTL) -> None:
        super().__init__(wiring)
        self._ttl = ttl

    def _command(
        self, device_id: str, now: datetime, command_id: str | None = None
    ) -> dict[str, Any]:
        command = Command(
            id=command_id or new_id(),
            device_id=device_id,
            kind="forget",
            issued_at=now,
            expires_at=now + self._ttl,
        )
        return self._signer.sign(command.to_wire())

    async def erase(self, device_id: str, who: str) -> dict[str, Any] | None:
        """Delete the device's data here, then send it `forget`; None when nothing is held."""
        now = utcnow()
        command = self._command(device_id, now)
        removed = await self._db.call(erase_device, device_id, command, who, now)
        if removed is None:
            return None
        self._counters["devices_erased"] += 1
        log.info("device %s erased by %s: %s", device_id, who, removed)
        if removed.get("member_link"):
            await self._clear_member_status(device_id)
        sent = await self._send([(command["id"], device_id, command)])
        return {
            "device_id": device_id,
            "removed": removed,
            "command_id": command["id"],
            "command": "sent" if sent else "queued",
        }

    async def _clear_member_status(self, device_id: str) -> None:
        """The device's retained member status goes with its member link (issue 19)."""
        try:
            await self._publish(self._topics.member(device_id), b"", True)
        except GatewayError as exc:
            log.info("member status of erased %s not cleared yet: %s", device_id, exc)

    async def on_receipts(self, device_id: str, ids: list[str]) -> None:
        done = await self._db.call(confirm_commands, device_id, ids, utcnow())
        if done["confirmed"]:
            self._counters["device_commands_confirmed"] += done["confirmed"]
            log.info("device %s confirmed %d command(s)", device_id, done["confirmed"])

    async def on_birth(self, device_id: str) -> None:
        rows = await self._db.call(outstanding_commands, device_id)
        if rows:
            self._counters["device_commands_resent_on_birth"] += len(rows)
            await self._send_rows(rows)

    async def resend_due(self, older_than: timedelta) -> int:
        rows = await self._db.call(outstanding_commands, None, utcnow() - older_than)
        await self._send_rows(rows)
        return len(rows)

    async def run(self, tick_s: float, resend_after_s: float) -> None:
        """Re-send unconfirmed commands every tick (those last sent `resend_after_s` ago)."""
        while True:
            try:
                await self.resend_due(timedelta(seconds=resend_after_s))
            except GatewayError as exc:
                log.warning("command re-send failed: %s", exc)
            await asyncio.sleep(tick_s)

    async def _send_rows(self, rows: list[dict[str, Any]]) -> None:
        now = utcnow()
        items = []
        for row in rows:
            payload = json_object(row["payload"])
            try:
                renew = parse_time(row["expires_at"]) - now < self._ttl / 2
            except (ValueError, TypeError) as exc:
                await self._quarantine(row["id"], row["device_id"], f"bad expires_at: {exc}")
                continue
            if payload is None:
                await self._quarantine(row["id"], row["device_id"], "payload not a JSON object")
                continue
            if renew:
                # still unconfirmed half-way through its life: the same command, signed anew
                payload = self._command(row["device_id"], now, row["id"])
                await self._db.call(replace_payload, row["id"], payload)
            items.append((row["id"], row["device_id"], payload))
        await self._send(items)

    async def _quarantine(self, command_id: str, device_id: str, reason: str) -> None:
        """A poisoned row: set aside (kept, counted), not retried at every pass."""
        self._counters["commands_quarantined"] += 1
        log.error("command %s for %s quarantined: %s", command_id, device_id, reason)
        await self._db.call(quarantine_command, command_id, reason)

    async def _send(self, items: list[tuple[str, str, dict[str, Any]]]) -> bool:
        sent: list[str] = []
        for command_id, device_id, payload in items:
            try:
                wire = codec.encode_dict(payload)
            except (ValueError, TypeError) as exc:
                await self._quarantine(command_id, device_id, f"cannot be encoded: {exc}")
                continue
            try:
                await self._publish(self._topics.cmd(device_id), wire, False)
            except GatewayError as exc:
                log.debug("command %s for %s not sent now: %s", command_id, device_id, exc)
                continue
            sent.append(command_id)
        if sent:
            self._counters["device_commands_sent"] += len(sent)
            await self._db.call(mark_commands_sent, sent, utcnow())
        return len(sent) == len(items)
