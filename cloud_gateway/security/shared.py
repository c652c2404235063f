"""The key ring shared by the workers of one database (issue 14): a change made with
`edgemart keys` in any worker's data directory reaches every worker, which then switches
with no restart.

Each worker, every `keys_watch_s`, compares its ring's `serial` with the shared record
(`db/keystate.py`): a higher local one is offered to the database; a higher shared one is
written into the worker's own `keys/` (the ring and the root-signed list are public; the
private keys are not shared: every `<kid>.pem` the shared ring lists must already be in the
worker's `keys/`, copied there by the operator when the key was added). Then `LiveKeys`
notices its files changed and switches. A worker missing a key file keeps signing with its
old key, logs it once and counts `keys_missing` until the file is there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.keystate import SharedRing, offer_shared, read_shared
from cloud_gateway.errors import GatewayError
from cloud_gateway.security import keys_ring
from daemonkit.files import write_durable
from protocol.ids import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalRing:
    serial: int
    ring: str
    key_list: str


def read_local(data_dir: Path) -> LocalRing | None:
    """This worker's ring and list as written, when it has a ring and both files agree."""
    folder = keys_ring.keys_dir(data_dir)
    try:
        ring_text = (folder / keys_ring.KEYRING).read_text(encoding="utf-8")
        list_text = (folder / keys_ring.KEYLIST).read_text(encoding="utf-8")
        ring = keys_ring.KeyRing.from_json(json.loads(ring_text))
        version = json.loads(list_text).get("version")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GatewayError(f"{folder}: unreadable key ring or list: {exc}") from exc
    if version != ring.version:
        return None  # `edgemart keys` is writing them
    return LocalRing(ring.serial, ring_text, list_text)


def adopt(data_dir: Path, shared: SharedRing) -> list[str]:
    """Write the shared ring and list into this worker's `keys/`; the kids it lists whose
    private key file is missing here instead (then nothing is written)."""
    folder = keys_ring.keys_dir(data_dir)
    ring = keys_ring.KeyRing.from_json(json.loads(shared.ring))
    missing = sorted(k for k in ring.keys if not (folder / f"{k}.pem").exists())
    if missing:
        return missing
    write_durable(folder / keys_ring.KEYRING, shared.ring.encode(), mode=0o600)
    write_durable(folder / keys_ring.KEYLIST, shared.key_list.encode())
    return []


class SharedKeys:
    """One worker's side of the shared ring: `sync` before each look at the files."""

    def __init__(
        self, db: Backend[Session], data_dir: Path, worker: str, counters: Counter[str]
    ) -> None:
        self._db = db
        self._data_dir = data_dir
        self._worker = worker
        self._counters = counters
        self._missing: list[str] = []

    async def sync(self) -> None:
        local = await asyncio.to_thread(read_local, self._data_dir)
        if local is None:
            return
        shared = await self._db.call(read_shared)
        if shared is None or local.serial > shared.serial:
            mine = SharedRing(local.serial, local.ring, local.key_list, self._worker)
            offered = await self._db.call(offer_shared, mine, utcnow())
            if offered:
                log.info("key ring serial %d shared with the other workers", local.serial)
            return
        if shared.serial <= local.serial:
            return
        missing = await asyncio.to_thread(adopt, self._data_dir, shared)
        if missing and missing != self._missing:
            self._counters["keys_missing"] += 1
            log.error(
                "the fleet's key ring (serial %d, from %s) lists keys missing from %s: %s;"
                " copy them there: this worker keeps its current key until then",
                shared.serial,
                shared.updated_by,
                keys_ring.keys_dir(self._data_dir),
                ", ".join(missing),
            )
        elif not missing:
            log.info("key ring serial %d taken from %s", shared.serial, shared.updated_by)
        self._missing = missing
