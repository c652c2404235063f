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
import json
import logging
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from cloud_gateway.db.migrations import transaction
from cloud_gateway.db.store import Store, insert_audit
from cloud_gateway.errors import GatewayError, StoreError
from cloud_gateway.runtime.wiring import Service, Wiring
from protocol import codec
from protocol.envelopes import Command
from protocol.ids import format_time, new_id, parse_time, utcnow

log = logging.getLogger(__name__)

COMMAND_TTL = timedelta(days=30)
"""A forget command expires after this; one still unconfirmed is re-signed before then."""
PERIODIC_SENDS_MAX = 5
"""Periodic re-sends of an unconfirmed command stop after this many sends: a device that
stays away gets it again at its next birth (and from its persistent session), so a device
gone for good does not fill the broker's queue for it."""
DATA_TABLES = (
    "signals",
    "aggregates",
    "outcomes",
    "outcome_features",
    "batches",
    "claims",
    "model_health",
)
"""Tables of what a device reported: emptied on erasure and again on its confirmation."""
HANDLED_ELSEWHERE = ("devices", "device_pushes", "grants", "device_commands")
"""Device-keyed tables `erase_device` treats apart: the registry row and pushes are deleted,
grants anonymised (stock stays right), the forget command itself kept until confirmed."""


def _delete_data(conn: sqlite3.Connection, device_id: str) -> dict[str, int]:
    return {
        table: max(
            conn.execute(f"DELETE FROM {table} WHERE device_id = ?", [device_id]).rowcount,  # noqa: S608 - fixed table names
            0,
        )
        for table in DATA_TABLES
    }


def erase_device(
    store: Store, device_id: str, command: dict[str, Any], who: str, at: datetime
) -> dict[str, int] | None:
    """Delete all the gateway holds for `device_id` and record `command` (signed, wire form)
    and the audit entry, in one transaction. None (nothing changed) when nothing is held."""
    conn = store.conn
    now = format_time(at)
    try:
        with transaction(conn):
            removed = _delete_data(conn, device_id)
            removed["device_pushes"] = max(
                conn.execute("DELETE FROM device_pushes WHERE device_id = ?", [device_id]).rowcount,
                0,
            )
            removed["grants_anonymized"] = max(
                conn.execute(
                    "UPDATE grants SET device_id = 'erased-' || lower(hex(randomblob(8))),"
                    " code = '' WHERE device_id = ?",
                    [device_id],
                ).rowcount,
                0,
            )
            removed["registry"] = max(
                conn.execute("DELETE FROM devices WHERE device_id = ?", [device_id]).rowcount, 0
            )
            if not any(removed.values()):
                return None  # nothing held: the empty transaction commits nothing
            conn.execute(
                "INSERT INTO device_commands (id, device_id, kind, payload, created_at,"
                " expires_at, requested_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    command["id"],
                    device_id,
                    command["kind"],
                    json.dumps(command, separators=(",", ":"), ensure_ascii=False),
                    now,
                    command["expires_at"],
                    who,
                ],
            )
            insert_audit(
                conn,
                who,
                "device.erase",
                device_id,
                at,
                detail={"removed": removed, "command_id": command["id"]},
            )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot erase device {device_id}: {exc}") from exc
    return removed


def outstanding_commands(
    store: Store, device_id: str | None = None, sent_before: datetime | None = None
) -> list[dict[str, Any]]:
    """Commands without a receipt: all of one device (its birth), or those last sent before
    `sent_before` and sent fewer than `PERIODIC_SENDS_MAX` times (the periodic re-send)."""
    sql = (
        "SELECT id, device_id, kind, payload, expires_at FROM device_commands"
        " WHERE receipt_at IS NULL"
    )
    params: list[Any] = []
    if device_id is not None:
        sql += " AND device_id = ?"
        params.append(device_id)
    if sent_before is not None:
        sql += " AND (sent_at IS NULL OR sent_at < ?) AND sends < ?"
        params += [format_time(sent_before), PERIODIC_SENDS_MAX]
    sql += " ORDER BY created_at, id LIMIT 10000"
    return [dict(r) for r in store.conn.execute(sql, params)]


def replace_payload(store: Store, command_id: str, payload: dict[str, Any]) -> None:
    """A re-signed command (same id, later expiry)."""
    with transaction(store.conn):
        store.conn.execute(
            "UPDATE device_commands SET payload = ?, expires_at = ? WHERE id = ?",
            [json.dumps(payload, separators=(",", ":")), payload["expires_at"], command_id],
        )


def mark_commands_sent(store: Store, ids: Sequence[str], at: datetime) -> None:
    with transaction(store.conn):
        store.conn.executemany(
            "UPDATE device_commands SET sent_at = ?, sends = sends + 1 WHERE id = ?",
            [(format_time(at), i) for i in ids],
        )


def confirm_commands(
    store: Store, device_id: str, ids: Sequence[str], at: datetime
) -> dict[str, int]:
    """The device confirmed these commands. A confirmed `forget` deletes again what the
    device reported before it forgot (batches in flight at the erasure). Returns counts."""
    conn = store.conn
    confirmed = 0
    swept: dict[str, int] = {}
    try:
        with transaction(conn):
            for command_id in ids:
                row = conn.execute(
                    "SELECT kind FROM device_commands WHERE id = ? AND device_id = ?"
                    " AND receipt_at IS NULL",
                    [command_id, device_id],
                ).fetchone()
                if row is None:
                    continue
                conn.execute(
                    "UPDATE device_commands SET receipt_at = ? WHERE id = ?",
                    [format_time(at), command_id],
                )
                confirmed += 1
                if row["kind"] == "forget":
                    swept = _delete_data(conn, device_id)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot confirm commands of {device_id}: {exc}") from exc
    return {"confirmed": confirmed, "swept": sum(swept.values())}


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
        sent = await self._send([(command["id"], device_id, command)])
        return {
            "device_id": device_id,
            "removed": removed,
            "command_id": command["id"],
            "command": "sent" if sent else "queued",
        }

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
            payload = json.loads(row["payload"])
            if parse_time(row["expires_at"]) - now < self._ttl / 2:
                # still unconfirmed half-way through its life: the same command, signed anew
                payload = self._command(row["device_id"], now, row["id"])
                await self._db.call(replace_payload, row["id"], payload)
            items.append((row["id"], row["device_id"], payload))
        await self._send(items)

    async def _send(self, items: list[tuple[str, str, dict[str, Any]]]) -> bool:
        sent: list[str] = []
        for command_id, device_id, payload in items:
            try:
                await self._publish(self._topics.cmd(device_id), codec.encode_dict(payload), False)
            except GatewayError as exc:
                log.debug("command %s for %s not sent now: %s", command_id, device_id, exc)
                continue
            sent.append(command_id)
        if sent:
            self._counters["device_commands_sent"] += len(sent)
            await self._db.call(mark_commands_sent, sent, utcnow())
        return len(sent) == len(items)
