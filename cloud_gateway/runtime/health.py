"""The gateway's health as the API shows it: queue levels now, and readiness (`/readyz`)."""

from __future__ import annotations

import asyncio
from typing import Any

from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.errors import GatewayError, StoreFull
from cloud_gateway.ingest.service import Ingestor
from cloud_gateway.runtime.link import MqttLink
from daemonkit.supervisor import Supervisor

READY_DB_TIMEOUT_S = 2.0


class Health:
    """Reads the link, the ingestor, the database and the loops; changes nothing."""

    def __init__(
        self, *, link: MqttLink, ingestor: Ingestor, db: Backend[Session], loops: Supervisor
    ) -> None:
        self._link = link
        self._ingestor = ingestor
        self._db = db
        self._loops = loops

    def gauges(self) -> dict[str, int]:
        """How full the uplink's queues are now (`GET /v1/stats`, `/metrics`): messages and
        bytes the MQTT client holds for ingest, batches parsed and waiting for their commit."""
        return {
            "uplink_queued_messages": self._link.queued_messages,
            "uplink_queued_bytes": self._link.queued_bytes,
            "ingest_waiting_batches": self._ingestor.waiting,
        }

    async def readiness(self) -> dict[str, Any]:
        """`/readyz`: the broker link is up, the database takes a write (rolled back), every
        owned loop runs. `ready` is True only when all three hold; each check says why not."""
        broker = {"ok": self._link.connected.is_set()}
        try:
            await asyncio.wait_for(self._db.check_writable(), READY_DB_TIMEOUT_S)
            database: dict[str, Any] = {"ok": True}
        except (GatewayError, TimeoutError) as exc:
            database = {"ok": False, "error": str(exc) or "timed out"}
            if isinstance(exc, StoreFull):
                database["full"] = True
                database["free_bytes"] = exc.free_bytes
        down = self._loops.down()
        restarts = self._loops.restarts
        loops = {
            "ok": not down,
            "down": down,
            "restarts": sum(restarts.values()),
            "restarts_by_loop": {name: n for name, n in sorted(restarts.items()) if n},
        }
        checks = {"broker": broker, "database": database, "loops": loops}
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}
