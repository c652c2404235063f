"""Flash sale: 2,000 devices claim 200 coupons against a real gateway process that is SIGKILLed
(with stock left: after ~50 committed grants) and restarted mid-sale; exactly 200 granted to
200 devices, every key answered the same."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import sqlite3
import uuid
from pathlib import Path

import aiohttp
import pytest

from cloud_gateway.security.auth import create_token
from protocol.envelopes import TrustFile
from protocol.signing import Verifier
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess, free_port
from tests.support.claim_crowd import ClaimCrowd, flash_claims, granted_codes, launch_flash_sale
from tests.support.processes import start_gateway, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICES = 2000
STOCK = 200
CONNECTIONS = 8
REPEATED = 300  # devices that send their claim twice at once (same idempotency key)
KILL_AT = 50  # SIGKILL once this many grants are committed (of STOCK)
PACE_CHUNK, PACE_S = 4, 0.02  # the first wave: ~200 claims/s, so the kill finds stock left


def committed_grants(data: Path) -> int:
    """Grants the gateway has committed so far (a read-only look at its WAL database)."""
    path = data / "gateway.db"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    try:
        return int(db.execute("SELECT count(*) FROM grants").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        db.close()


async def test_flash_sale_survives_sigkill_and_never_oversells(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    root = f"fs{uuid.uuid4().hex[:8]}/v1"
    topics = Topics(root)
    data = tmp_path / "gw"
    log = tmp_path / "gateway.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await start_gateway(mosquitto.url, data, port, log, "--topic-root", root, timeout=30)
    try:
        token = await asyncio.to_thread(create_token, data)
        trust = TrustFile.model_validate_json((data / "trust.json").read_text())
        verifier = Verifier.from_public_keys(trust.keys)
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base, headers=auth) as http:
            cid = await launch_flash_sale(http, "Double 11 flash sale", STOCK)

        devices = [f"fs-{i:04d}" for i in range(DEVICES)]
        claims = flash_claims(devices, cid)
        async with ClaimCrowd(mosquitto.port, topics, claims, connections=CONNECTIONS) as crowd:
            answers, send = crowd.answers, crowd.send
            rng = random.Random(6)
            first = devices[:600]
            repeated = rng.sample(devices, REPEATED)
            wave = first + [d for d in repeated if d in first]
            rng.shuffle(wave)

            async def paced() -> None:  # a crowd arriving, not one burst
                for start in range(0, len(wave), PACE_CHUNK):
                    await send(wave[start : start + PACE_CHUNK])
                    await asyncio.sleep(PACE_S)

            pacer = asyncio.create_task(paced(), name="fs-paced")
            # Kill the gateway mid-sale, with stock left: watch the grants it committed.
            async with asyncio.timeout(60):
                # polled: the condition lives in another process's database, no event to await
                while await asyncio.to_thread(committed_grants, data) < KILL_AT:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pacer
            granted_at_kill = await asyncio.to_thread(committed_grants, data)
            rest = devices[600:]
            await send(rest + [d for d in repeated if d not in first])  # while it is down
            proc = await start_gateway(
                mosquitto.url, data, port, log, "--topic-root", root, timeout=30
            )
            # Devices claim again (same key) until each has an answer.
            async with asyncio.timeout(180):
                while len(answers) < DEVICES:
                    await asyncio.sleep(3)
                    await send([d for d in devices if d not in answers])
            # Repeated keys after the sale: the stored answer, unchanged.
            again = rng.sample(devices, 100)
            before = {d: len(answers[d]) for d in again}
            await send(again)
            async with asyncio.timeout(30):
                while any(len(answers[d]) <= before[d] for d in again):
                    await crowd.got_answer.wait()
                    crowd.got_answer.clear()

        assert KILL_AT <= granted_at_kill < STOCK  # the kill landed mid-sale, stock left
        granted = granted_codes(answers, claims, verifier)
        assert len(granted) == STOCK
        assert len(set(granted.values())) == STOCK
        assert all(len(answers[d]) >= 2 for d in again)  # and identical, checked above
        assert sum(len(copies) > 1 for copies in answers.values()) >= len(again)

        async with aiohttp.ClientSession(base, headers=auth) as http:
            stats = await (await http.get(f"/v1/campaigns/{cid}/stats")).json()
        assert stats["claims_granted"] == STOCK
        assert stats["claims_refused"] == DEVICES - STOCK
        assert stats["stock"]["flash-1"] == {"initial": STOCK, "left": 0}
        db = sqlite3.connect(data / "gateway.db")
        try:
            rows = db.execute(
                "SELECT device_id FROM grants WHERE campaign_id = ?", [cid]
            ).fetchall()
            assert sorted(r[0] for r in rows) == sorted(granted)
            assert db.execute("SELECT min(stock) FROM offer_stock").fetchone() == (0,)
        finally:
            db.close()
        text = log.read_text()
        assert not re.search(r"Traceback", text), text[-3000:]
    finally:
        stop(proc)
