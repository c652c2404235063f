"""Which copy of a store this is: a store file copied to another device (a cloned disk image,
a restored backup) must not share its outbox id with the original, or the gateway would take
the copy's new batches for the original's (it de-duplicates by outbox id and seq) and the
acks of one would delete the other's rows. At each open the store compares where its file
lives (device and inode of the database file, and the machine's hardware address when it has
one) with what it recorded; on a difference it takes a new outbox id for the batches it cuts
from now on (batches already cut keep theirs: both copies hold them alike, so an ack for them
is right for either). Counted (`outbox_rotations`) and logged. Blocking: store thread."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import uuid
from pathlib import Path

from agent.store import outbox_sql

log = logging.getLogger(__name__)
RANDOM_NODE_BIT = 1 << 40
"""`uuid.getnode()` sets the multicast bit when it found no hardware address (a random one)."""


def here(path: Path) -> dict[str, int]:
    """Where this store file lives now."""
    stat = os.stat(path)
    found = {"dev": int(stat.st_dev), "ino": int(stat.st_ino)}
    node = uuid.getnode()
    if not node & RANDOM_NODE_BIT:
        found["node"] = node
    return found


def check(db: sqlite3.Connection, path: Path) -> bool:
    """Record where the store lives; a new outbox id when it moved (True). Call in a write
    transaction, after the migrations; it writes only when something changed."""
    now = here(path)
    row = db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
    if row is not None and json.loads(row[0]) == now:
        return False  # where it was: nothing to write (a full disk opens all the same)
    outbox_sql.meta_set(db, "instance", json.dumps(now, sort_keys=True))
    if row is None:
        return False  # first open (or an older version's store): nothing to compare
    before = json.loads(row[0])
    moved = before.get("dev") != now["dev"] or before.get("ino") != now["ino"]
    if "node" in before and "node" in now:
        moved = moved or before["node"] != now["node"]
    if not moved:
        return False
    old = db.execute("SELECT value FROM meta WHERE key = 'outbox_id'").fetchone()
    fresh = uuid.uuid4().hex
    outbox_sql.meta_set(db, "outbox_id", fresh)
    db.execute(
        "INSERT INTO meta(key, value) VALUES ('outbox_rotations', '1') ON CONFLICT(key)"
        " DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
    )
    log.warning(
        "the store %s was copied here (a cloned image or a restored backup: %s -> %s);"
        " new batches carry a new outbox id %s (was %s)",
        path,
        before,
        now,
        fresh,
        old[0] if old else None,
    )
    return True
