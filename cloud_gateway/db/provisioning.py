"""SQL of provisioning: claim batches (hash, size, use) and the certificate each device got;
every issue, refusal and revocation audited in its own transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloud_gateway.db.audit import insert_audit
from cloud_gateway.db.backend import Error, Session
from cloud_gateway.errors import StoreError
from protocol.ids import format_time, parse_time


def add_batch(store: Session, batch_id: str, digest: str, size: int, who: str) -> None:
    """A production batch's claim credential (its hash) and how many devices it may make."""
    now = store.clock()
    try:
        with store.transaction():
            store.conn.execute(
                "INSERT INTO claim_batches (id, hash, size, used, created_at)"
                " VALUES (?, ?, ?, 0, ?)",
                [batch_id, digest, size, format_time(now)],
            )
            target = f"batch:{batch_id}"
            insert_audit(store, who, "claim.create", target, now, detail={"size": size})
    except Error as exc:
        raise StoreError(f"cannot store claim batch {batch_id!r}: {exc}") from exc


Redemption = tuple[str, str, int]
"""(claim hash, device id, certificate serial)."""


def redeem(store: Session, digest: str, device_id: str, serial: int, who: str) -> str | None:
    """Record the certificate `serial` for `device_id` under the claim with this hash, in one
    transaction with its audit row; or the reason it is refused (also audited): an unknown or
    revoked claim, a device id already provisioned, a batch used up."""
    return redeem_many(store, [(digest, device_id, serial)], who)[0]


def redeem_many(store: Session, items: list[Redemption], who: str) -> list[str | None]:
    """`redeem` for many devices in one transaction (one commit for a crowd at once), each
    checked in turn: the same device twice, or a batch filling up within them, is refused."""
    try:
        with store.transaction():
            return [_redeem(store, *item, who) for item in items]
    except Error as exc:
        raise StoreError(f"cannot record provisioned devices: {exc}") from exc


def _redeem(store: Session, digest: str, device_id: str, serial: int, who: str) -> str | None:
    now = store.clock()
    reason: str | None = None
    detail: dict[str, Any] = {"device_id": device_id}
    batch = store.one(
        "SELECT id, size, used, revoked_at FROM claim_batches WHERE hash = ?", [digest]
    )
    if batch is None:
        return "unknown claim credential"  # nothing to name in the audit: counted only
    target = f"batch:{batch['id']}"
    if batch["revoked_at"] is not None:
        reason = "claim credential revoked"
    elif store.one("SELECT 1 FROM device_certs WHERE device_id = ?", [device_id]):
        reason = f"device {device_id!r} is already provisioned"
    else:
        claimed = store.conn.execute(
            "UPDATE claim_batches SET used = used + 1 WHERE id = ? AND used < size",
            [batch["id"]],
        )
        if claimed.rowcount != 1:
            reason = f"batch {batch['id']!r} is used up ({batch['size']} devices)"
    if reason is None:
        store.conn.execute(
            "INSERT INTO device_certs (device_id, batch_id, serial, issued_at) VALUES (?, ?, ?, ?)",
            [device_id, batch["id"], format(serial, "x"), format_time(now)],
        )
        detail["serial"] = format(serial, "x")
        insert_audit(store, who, "provision.issue", target, now, detail=detail)
        return None
    detail["reason"] = reason
    insert_audit(store, who, "provision.refused", target, now, detail=detail)
    return reason


def revoke_device(store: Session, device_id: str, who: str) -> bool:
    """Revoke the device's certificate (audited); False when it has none live."""
    sql = "UPDATE device_certs SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL"
    return _revoke(store, sql, device_id, audit=(who, "provision.revoke", f"device:{device_id}"))


def revoke_batch(store: Session, batch_id: str, who: str) -> bool:
    """Revoke a claim credential (a leaked one): no device is provisioned with it any more."""
    sql = "UPDATE claim_batches SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
    return _revoke(store, sql, batch_id, audit=(who, "claim.revoke", f"batch:{batch_id}"))


def _revoke(store: Session, sql: str, key: str, *, audit: tuple[str, str, str]) -> bool:
    """`sql` sets `revoked_at` (its first parameter: now) on the live row of `key`."""
    now = store.clock()
    return _change_one(store, now, sql, [format_time(now), key], audit=audit)


def _change_one(
    store: Session, now: datetime, sql: str, args: list[Any], *, audit: tuple[str, str, str]
) -> bool:
    """Run `sql` and record `audit` (who, action, target) at `now`, in one transaction; False,
    and nothing audited, when it changed no row (revoked or removed before)."""
    with store.transaction():
        if store.conn.execute(sql, args).rowcount != 1:
            return False
        insert_audit(store, *audit, now)
    return True


def revoked_serials(store: Session) -> list[tuple[int, datetime]]:
    """(serial, revoked at) of every revoked device certificate: what the CRL lists."""
    rows = store.rows(
        "SELECT serial, revoked_at FROM device_certs WHERE revoked_at IS NOT NULL ORDER BY serial"
    )
    return [(int(str(r["serial"]), 16), parse_time(str(r["revoked_at"]))) for r in rows]


def set_password(store: Session, device_id: str, digest: str, who: str) -> None:
    """The device's broker password (its Mosquitto hash), new or replacing one; audited."""
    now = store.clock()
    with store.transaction():
        store.conn.execute("DELETE FROM device_passwords WHERE device_id = ?", [device_id])
        store.conn.execute(
            "INSERT INTO device_passwords (device_id, hash, created_at) VALUES (?, ?, ?)",
            [device_id, digest, format_time(now)],
        )
        insert_audit(store, who, "password.set", f"device:{device_id}", now)


def drop_password(store: Session, device_id: str, who: str) -> bool:
    """Remove the device's broker password (audited); False when it had none."""
    return _change_one(
        store,
        store.clock(),
        "DELETE FROM device_passwords WHERE device_id = ?",
        [device_id],
        audit=(who, "password.revoke", f"device:{device_id}"),
    )


def password_hashes(store: Session) -> list[tuple[str, str]]:
    """(device id, Mosquitto hash) of every device with a broker password."""
    rows = store.rows("SELECT device_id, hash FROM device_passwords ORDER BY device_id")
    return [(str(r["device_id"]), str(r["hash"])) for r in rows]
