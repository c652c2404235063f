"""Flash sale across workers: 4 gateway processes on one PostgreSQL consume claims through
`$share/gateway/...`; 800 devices claim 150 coupons; one worker is SIGKILLed mid-sale (stock
left) and never comes back. Exactly 150 granted to 150 devices, every claim answered (devices
resend unanswered claims under the same key), each key answered the same, and the ledger (the
`grants` rows) is exactly the grants devices received."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import aiohttp
import psycopg
import pytest

from cloud_gateway.security.auth import create_token
from protocol.envelopes import TrustFile
from protocol.signing import Verifier
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess, free_port
from tests.support.claim_crowd import ClaimCrowd, flash_claims, granted_codes, launch_flash_sale
from tests.support.processes import start_gateway, stop, tail

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = 4
DEVICES = 800
STOCK = 150
CONNECTIONS = 8
REPEATED = 120  # devices that send their claim twice at once (same key, maybe two workers)
KILL_AT = 40  # SIGKILL one worker once this many grants are committed (of STOCK)
PACE_CHUNK, PACE_S = 4, 0.02  # the first wave: ~200 claims/s, so the kill finds stock left


def committed_grants(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM grants").fetchone()
    return int(row[0]) if row else 0


async def test_four_workers_on_postgresql_grant_exactly_the_stock_with_one_killed(
    mosquitto: MosquittoProcess, postgres_url: str, tmp_path: Path
) -> None:
    root = f"fp{uuid.uuid4().hex[:8]}/v1"
    topics = Topics(root)
    ports = [free_port() for _ in range(WORKERS)]
    logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
    dirs = [tmp_path / f"gw{i}" for i in range(WORKERS)]
    extra = ("--topic-root", root, "--db", postgres_url, "--shared-group", "gateway")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(await start_gateway(mosquitto.url, dirs[0], ports[0], logs[0], *extra))
        for other in dirs[1:]:  # one signing key for the fleet of workers; a client id each
            shutil.copytree(dirs[0] / "keys", other / "keys")
        for i in range(1, WORKERS):
            procs.append(
                await start_gateway(mosquitto.url, dirs[i], ports[i], logs[i], *extra, timeout=30)
            )
        token = await asyncio.to_thread(create_token, dirs[0], db=postgres_url)
        trust = TrustFile.model_validate_json((dirs[0] / "trust.json").read_text())
        verifier = Verifier.from_public_keys(trust.keys)
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{ports[0]}", headers=auth) as http:
            cid = await launch_flash_sale(http, "Double 11 across workers", STOCK)

        devices = [f"fp-{i:04d}" for i in range(DEVICES)]
        claims = flash_claims(devices, cid)
        async with ClaimCrowd(
            mosquitto.port, topics, claims, connections=CONNECTIONS, tag="fp"
        ) as crowd:
            answers, send = crowd.answers, crowd.send
            rng = random.Random(12)
            wave = devices + rng.sample(devices, REPEATED)
            rng.shuffle(wave)

            async def paced() -> None:  # a crowd arriving, not one burst
                for start in range(0, len(wave), PACE_CHUNK):
                    await send(wave[start : start + PACE_CHUNK])
                    await asyncio.sleep(PACE_S)

            pacer = asyncio.create_task(paced(), name="fp-paced")
            async with asyncio.timeout(90):
                # polled: the condition lives in the database, no event to await
                while await asyncio.to_thread(committed_grants, postgres_url) < KILL_AT:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            victim = procs[1]
            victim.send_signal(signal.SIGKILL)  # mid-sale; it never comes back
            victim.wait(timeout=10)
            granted_at_kill = await asyncio.to_thread(committed_grants, postgres_url)
            await pacer
            # Devices claim again (same key) until each has an answer, as agents do.
            async with asyncio.timeout(180):
                while len(answers) < DEVICES:
                    await asyncio.sleep(2)
                    await send([d for d in devices if d not in answers])

        assert KILL_AT <= granted_at_kill < STOCK  # the kill landed mid-sale, stock left
        granted = granted_codes(answers, claims, verifier)
        assert len(answers) == DEVICES  # every claim answered
        assert len(granted) == STOCK  # exactly the stock, one per device
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            ledger = conn.execute(
                "SELECT device_id, code FROM grants WHERE campaign_id = %s", [cid]
            ).fetchall()
            left = conn.execute("SELECT stock FROM offer_stock WHERE campaign_id = %s", [cid])
            assert left.fetchall() == [(0,)]
        assert dict(ledger) == granted  # the ledger is what devices were told
        decided = []
        for i in (0, 2, 3):  # the survivors shared the sale
            async with aiohttp.ClientSession(headers=auth) as http:
                url = f"http://127.0.0.1:{ports[i]}/v1/stats"
                stats = await (await http.get(url)).json()
            decided.append(stats.get("claims_granted", 0) + stats.get("claims_refused", 0))
        assert all(n > 0 for n in decided), decided
        # Each key is decided once in the fleet: the survivors' new decisions and those the
        # killed worker committed before it died add up to one per device.
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM claims WHERE result IS NOT NULL").fetchone()
        assert row == (DEVICES,)
        assert DEVICES - granted_at_kill <= sum(decided) <= DEVICES, decided
        for i, log in enumerate(logs):
            text = log.read_text(errors="replace")
            assert not re.search(r"Traceback", text), f"worker {i}:\n{tail(log)}"
    finally:
        for proc in procs:
            stop(proc)
