"""SQL of leases: named work that must happen once in a fleet of workers, held by one worker
at a time until it expires (the scheduler, owed re-sends), taken over once it has.

One statement acquires or renews, atomically on both backends: the row is inserted, or
updated only when it has expired or is already the caller's; `RETURNING` answers who holds
it now (no row: someone else holds it). Times are epoch seconds of the store's clock.
"""

from __future__ import annotations

from typing import Any

from cloud_gateway.db.backend import Error, Session
from cloud_gateway.errors import StoreError

ACQUIRE = (
    "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
    " expires_at = excluded.expires_at"
    " WHERE leases.expires_at < ? OR leases.holder = excluded.holder"
    " RETURNING holder"
)


def acquire(store: Session, name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew lease `name` for `ttl_s` seconds from now; True when `holder` has it."""
    now = store.clock().timestamp()
    try:
        with store.transaction():
            row = store.conn.execute(ACQUIRE, [name, holder, now + ttl_s, now]).fetchone()
    except Error as exc:
        raise StoreError(f"lease {name}: {exc}") from exc
    return row is not None and row[0] == holder


def release(store: Session, holder: str, names: list[str] | None = None) -> int:
    """Give up the leases `holder` holds (those of `names`, or all); how many were released."""
    with store.transaction():
        if names is None:
            cur = store.conn.execute("DELETE FROM leases WHERE holder = ?", [holder])
        else:
            cur = store.conn.executemany(
                "DELETE FROM leases WHERE holder = ? AND name = ?", [(holder, n) for n in names]
            )
        return max(cur.rowcount, 0)


def holders(store: Session) -> list[dict[str, Any]]:
    """Every lease not yet expired: name, holder, expires_at."""
    now = store.clock().timestamp()
    return store.rows(
        "SELECT name, holder, expires_at FROM leases WHERE expires_at >= ? ORDER BY name", [now]
    )
