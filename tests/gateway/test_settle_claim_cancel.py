"""Issue 14's "catalog not pushed after a gateway restart": a settle cancelled (its gateway
stopping) while its claim was being written, or while releasing it, left the claim behind,
and a restarted gateway's first launch could not settle its push markers until the claim
ran out (120 s then, 30 s now). Real PostgreSQL and Mosquitto; another connection holds the
claim's row so the settle is cancelled exactly while PostgreSQL writes its claim."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import psycopg
import pytest

from cloud_gateway.campaigns.service import SETTLE_CLAIM, CampaignService
from cloud_gateway.db import leases
from cloud_gateway.runtime.gateway import Gateway
from simulators.brokers import MosquittoProcess
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def _waiting_on_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
        return row is not None and row[0] > 0


async def test_a_settle_cancelled_while_taking_its_claim_leaves_no_claim(
    mosquitto: MosquittoProcess, tmp_path: Path, postgres_url: str
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=postgres_url)
    async with Gateway(settings) as gw:
        blocker: psycopg.Connection[tuple[object, ...]] = await asyncio.to_thread(
            psycopg.Connection.connect, postgres_url
        )
        try:
            await asyncio.to_thread(
                blocker.execute,
                "INSERT INTO leases (name, holder, expires_at) VALUES (%s, 'gone', 0)"
                " ON CONFLICT (name) DO UPDATE SET holder = 'gone', expires_at = 0",
                [SETTLE_CLAIM],
            )
            await asyncio.to_thread(blocker.commit)
            await asyncio.to_thread(
                blocker.execute, "SELECT * FROM leases WHERE name = %s FOR UPDATE", [SETTLE_CLAIM]
            )
            service = CampaignService(gw.campaigns.wiring)  # its own holder; nothing else runs it
            settling = asyncio.create_task(service.settle())
            await eventually(lambda: asyncio.to_thread(_waiting_on_lock, postgres_url), 10)
            settling.cancel()  # the gateway stops while PostgreSQL writes the claim
            await asyncio.sleep(0.1)
            await asyncio.to_thread(blocker.rollback)  # the claim is written now
        finally:
            await asyncio.to_thread(blocker.close)
        with contextlib.suppress(asyncio.CancelledError):
            await settling
        # nothing settles with this holder again (its gateway stopped): it must be gone now
        held = await gw.db.call(leases.holders)
        assert not any(h["holder"] == service.holder for h in held), held
