"""This worker in a fleet of gateway workers on one database: its identity and heartbeat in
the registry (`GET /v1/gateways`), and the lease that lets one worker at a time run the loops
whose work must happen once (the scheduler, owed re-sends).

The lease is a row (`db/leases.py`) taken for `LEASE_S` and renewed every `RENEW_S`; a worker
killed while holding it is replaced once it expires. This worker counts it held only until
`LEASE_S - RENEW_S` after the renewal started, so it stops before another can take it over
(the margin covers a slow renewal and clock drift between hosts, not a skew of seconds).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from cloud_gateway import GATEWAY_VERSION
from cloud_gateway.db import leases
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.workers import HEARTBEAT_S, WorkerRow, deregister, heartbeat
from cloud_gateway.errors import GatewayError
from daemonkit.supervisor import LoopFactory

log = logging.getLogger(__name__)

ONCE_LEASE = "gateway-once"
"""The lease of the loops that must run on one worker only."""
LEASE_S = 10.0
RENEW_S = 3.0


def new_worker_id() -> str:
    """host-pid-random: unique per process, readable in logs and `GET /v1/gateways`."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Lease:
    """One named lease kept by `run`: `held` is set while this worker has it, `lost` while not."""

    def __init__(
        self,
        db: Backend[Session],
        holder: str,
        name: str = ONCE_LEASE,
        *,
        ttl_s: float = LEASE_S,
        renew_s: float = RENEW_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self.holder = holder
        self.name = name
        self._ttl = ttl_s
        self._renew = renew_s
        self._monotonic = monotonic
        self._valid_until = 0.0
        self.held = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost.set()
        self.taken = 0
        """How many times this worker took the lease (not counting renewals)."""

    def holds(self) -> bool:
        return self.held.is_set() and self._monotonic() < self._valid_until

    async def run(self) -> None:
        """Take or renew the lease every `renew_s` (a loop of the gateway)."""
        while True:
            await self.renew()
            await asyncio.sleep(self._renew)

    async def renew(self) -> bool:
        """One attempt to take or renew it; True while held."""
        started = self._monotonic()
        try:
            ok: bool | None = await self._db.call(leases.acquire, self.name, self.holder, self._ttl)
        except GatewayError as exc:
            log.warning("lease %s not renewed: %s", self.name, exc)
            ok = None
        if ok:
            self._valid_until = started + self._ttl - self._renew
            if not self.held.is_set():
                self.taken += 1
                log.info("worker %s took lease %s", self.holder, self.name)
                self.lost.clear()
                self.held.set()
        elif ok is False or self._monotonic() >= self._valid_until:
            self._drop("held by another worker" if ok is False else "not renewed in time")
        return self.holds()

    def _drop(self, why: str) -> None:
        if self.held.is_set():
            log.warning("worker %s lost lease %s (%s)", self.holder, self.name, why)
        self.held.clear()
        self.lost.set()

    async def release(self) -> None:
        """Stop counting it held and give it up at once (a drain), so another need not wait."""
        was = self.held.is_set()
        self.held.clear()
        self.lost.set()
        if was:
            await self._db.call(leases.release, self.holder, [self.name])
            log.info("worker %s released lease %s", self.holder, self.name)


async def while_holding(lease: Lease, name: str, factory: LoopFactory) -> None:
    """Run `factory()` only while `lease` is held: started when it is taken, cancelled when it
    is lost; a crash of the loop is raised (its supervisor restarts this)."""
    while True:
        await lease.held.wait()
        work = asyncio.create_task(factory(), name=name)
        lost = asyncio.create_task(lease.lost.wait(), name=f"{name}-lease")
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
            # Read before the cancellations below: `lost` is done once cancelled, and a
            # crash read after them was taken for a lost lease (swallowed, restarted at once,
            # never counted).
            ended = work.done() and not lost.done()
        finally:
            for task in (work, lost):
                task.cancel()
            await asyncio.gather(work, lost, return_exceptions=True)
        if ended and not work.cancelled():
            work.result()  # the loop crashed (raised here) or ended
            return


class Worker:
    """This process in the registry: its row refreshed every `every_s` (`run`), removed on
    leave."""

    def __init__(
        self,
        db: Backend[Session],
        lease: Lease,
        *,
        every_s: float = HEARTBEAT_S,
        version: str = GATEWAY_VERSION,
    ) -> None:
        self._db = db
        self.lease = lease
        self.id = lease.holder
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        self.http_port: int | None = None
        """Set once the HTTP server listens."""
        self.every_s = every_s
        self.version = version

    def row(self) -> WorkerRow:
        held = (self.lease.name,) if self.lease.holds() else ()
        return WorkerRow(
            self.id, self.host, self.pid, self.started_at, self.http_port, self.version, held
        )

    async def beat(self) -> None:
        await self._db.call(heartbeat, self.row())

    async def run(self) -> None:
        """Heartbeat every `every_s` (a loop of the gateway)."""
        while True:
            try:
                await self.beat()
            except GatewayError as exc:
                log.warning("heartbeat of worker %s failed: %s", self.id, exc)
            await asyncio.sleep(self.every_s)

    async def leave(self) -> None:
        """Release the lease and leave the registry (a drain)."""
        await self.lease.release()
        await self._db.call(deregister, self.id)
        log.info("worker %s left the registry", self.id)
