"""SQL of the key ring's shared record (issue 14): one row, the ring and its signed list with
the highest serial a worker has offered. Plain functions over a session, on the store thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cloud_gateway.db.backend import Session
from protocol.ids import format_time

NAME = "ring"


@dataclass(frozen=True, slots=True)
class SharedRing:
    serial: int
    ring: str
    key_list: str
    updated_by: str


def read_shared(store: Session) -> SharedRing | None:
    rows = store.rows(
        "SELECT serial, ring, key_list, updated_by FROM key_state WHERE name = ?", [NAME]
    )
    if not rows:
        return None
    r = rows[0]
    return SharedRing(int(r["serial"]), str(r["ring"]), str(r["key_list"]), str(r["updated_by"]))


def offer_shared(store: Session, offered: SharedRing, at: datetime) -> bool:
    """Record this ring if its serial is higher than the one shared; True when it is now."""
    with store.transaction():
        row = store.conn.execute(
            "INSERT INTO key_state (name, serial, ring, key_list, updated_at, updated_by)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " serial = excluded.serial, ring = excluded.ring, key_list = excluded.key_list,"
            " updated_at = excluded.updated_at, updated_by = excluded.updated_by"
            " WHERE key_state.serial < excluded.serial RETURNING serial",
            [
                NAME,
                offered.serial,
                offered.ring,
                offered.key_list,
                format_time(at),
                offered.updated_by,
            ],
        ).fetchone()
    return row is not None
