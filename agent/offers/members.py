"""The member's signed tier and balance (issue 19): verified, kept and handed to `Decisions`,
which ranks with it instead of the `member_tier` the device observes about itself.

A status arrives retained on `dev/{id}/down/member`. It is taken when signed by a key of the
`commands` role, for this device, unexpired and of a higher version than the one held; anything
else is refused and counted (`member_statuses_rejected`). An empty retained payload (the
gateway unlinked or erased the member) drops it. Once taken it is kept in the store and used
until it expires.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime

from agent.errors import StoreError
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from agent.store.outbox_sql import meta_set
from agent.store.thread import StoreThread
from mqttlink.logs import OnceLogger
from protocol import codec
from protocol.errors import ProtocolError
from protocol.members import SIGNING_ROLE, MemberStatus
from protocol.signing import Verifier, decode_signed

log = logging.getLogger(__name__)

MAX_STATUS_BYTES = 8 * 1024
META_KEY = "member_status"
COUNTERS = ("member_statuses_accepted", "member_statuses_rejected", "member_statuses_dropped")


def _load(thread: StoreThread) -> str | None:
    row = thread.conn().execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
    return None if row is None else str(row[0])


def _save(thread: StoreThread, value: str) -> None:
    with thread.tx() as tx:
        meta_set(tx, META_KEY, value)


class MemberKeeper:
    """Holds the newest verified `MemberStatus` of this device; `tier_at(now)` for ranking."""

    def __init__(self, device_id: str, verifier: Verifier, store: Store, metrics: Metrics) -> None:
        self._device_id = device_id
        self._verifier = verifier
        self._store = store
        self._metrics = metrics
        self._faults = OnceLogger(log)
        self.status: MemberStatus | None = None
        for name in COUNTERS:
            metrics.counters.setdefault(name, 0)

    async def load(self) -> None:
        """Take the status kept by an earlier run (verified when it arrived)."""
        text = await self._store.call(_load, self._store.thread)
        if not text:
            return
        try:
            self.status = MemberStatus.model_validate_json(text, extra="ignore")
        except ValueError as exc:
            log.warning("kept member status unreadable, ignored: %s", exc)

    def tier_at(self, now: datetime) -> int | None:
        """The signed tier in force at `now` (None: none held, or expired)."""
        status = self.status
        if status is None or now >= status.expires_at:
            return None
        return status.tier

    def _refuse(self, reason: str, detail: str) -> None:
        self._metrics.inc("member_statuses_rejected")
        self._faults.log(reason, "refused member status: %s", detail)

    async def handle(self, device_id: str, payload: bytes, now: datetime) -> bool:
        """Verify and take one status from `dev/{id}/down/member`; True when it changed."""
        if device_id != self._device_id:
            self._refuse("not_mine", f"status on the topic of {device_id!r}")
            return False
        if not payload:
            if self.status is None:
                return False
            await self._keep("")
            self.status = None
            self._metrics.inc("member_statuses_dropped")
            return True
        try:
            status, _unknown = decode_signed(
                payload,
                MemberStatus,
                self._verifier,
                max_compressed=MAX_STATUS_BYTES,
                role=SIGNING_ROLE,
            )
        except ProtocolError as exc:
            self._refuse(exc.reason, str(exc))
            return False
        if status.device_id != self._device_id:
            self._refuse("not_mine", f"status for {status.device_id!r}")
            return False
        if now >= status.expires_at:
            self._refuse("expired", f"status {status.id} expired at {status.expires_at}")
            return False
        held = self.status
        if held is not None and status.version <= held.version:
            return False  # the same one redelivered (retained), or an older one
        if not await self._keep(codec.encode(status).decode()):
            return False
        self.status = status
        self._metrics.inc("member_statuses_accepted")
        return True

    async def _keep(self, text: str) -> bool:
        try:
            await self._store.call(_save, self._store.thread, text)
        except (sqlite3.Error, StoreError) as exc:
            log.warning("member status not kept: %s", exc)
            return False
        return True

    def to_json(self) -> dict[str, object] | None:
        """For `/v1/status`: the tier and balance held."""
        s = self.status
        if s is None:
            return None
        return {
            "tier": s.tier,
            "tier_name": s.tier_name,
            "balance": s.balance,
            "version": s.version,
        }
