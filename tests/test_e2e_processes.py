"""The whole loop as users run it: `edgemart gateway run` and `edgemart agent run` as real
processes, a real Mosquitto, the operator and the device app over real HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgemart.broker import MosquittoProcess, free_port
from protocol.ids import format_time, utcnow

pytestmark = pytest.mark.integration
EDGEMART = [sys.executable, "-m", "edgemart"]


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*EDGEMART, *args], stdout=handle, stderr=subprocess.STDOUT, env=env
        )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"did not stop on SIGTERM:\n{log.read_text()[-3000:]}") from None
    return proc.returncode


async def _wait_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"process exited early:\n{log.read_text()[-3000:]}"
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer:\n{log.read_text()[-3000:]}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    mosquitto = MosquittoProcess(str(tmp_path / "mosquitto"))
    mosquitto.start()
    yield mosquitto
    mosquitto.kill()


async def _eventually(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


async def test_gateway_and_agent_processes_close_the_loop(
    tmp_path: Path, broker: MosquittoProcess
) -> None:
    gw_dir, dev_dir = tmp_path / "gw", tmp_path / "dev"
    gw_port, api_port = free_port(), free_port()
    gw_log, agent_log = tmp_path / "gateway.log", tmp_path / "agent.log"
    gateway = _spawn(
        [
            "gateway",
            "run",
            "--broker",
            broker.url,
            "--data-dir",
            str(gw_dir),
            "--http-port",
            str(gw_port),
        ],
        gw_log,
    )
    agent = None
    try:
        await _wait_http(f"http://127.0.0.1:{gw_port}/healthz", gateway, gw_log)
        assert (gw_dir / "trust.json").exists()
        token = subprocess.run(
            [*EDGEMART, "gateway", "token", "create", "--data-dir", str(gw_dir)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        assert token and "\n" not in token
        agent = _spawn(
            [
                "agent",
                "run",
                "--profile",
                "tv",
                "--device-id",
                "tv-e2e-0001",
                "--broker",
                broker.url,
                "--data-dir",
                str(dev_dir),
                "--api-port",
                str(api_port),
                "--trust",
                str(gw_dir / "trust.json"),
            ],
            agent_log,
        )
        await _wait_http(f"http://127.0.0.1:{api_port}/healthz", agent, agent_log)
        dev = f"http://127.0.0.1:{api_port}"
        gw = f"http://127.0.0.1:{gw_port}"
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw}/v1/devices", headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
            consent = {"purposes": {"analytics": True, "personalization": True, "marketing": True}}
            async with http.put(f"{dev}/v1/consent", json=consent) as r:
                assert r.status == 200, await r.text()
            ids: list[str] = []
            for i in range(10):
                body = {
                    "signals": [
                        {
                            "kind": "content_view",
                            "attrs": {
                                "genre": "drama",
                                "category": "tv_streaming",
                                "seconds": 60 + i,
                            },
                        }
                        for _ in range(20)
                    ]
                }
                async with http.post(f"{dev}/v1/signals", json=body) as r:
                    assert r.status == 202, await r.text()
                    ids += (await r.json())["ids"]
            async with http.post(f"{dev}/v1/signals", json={"signals": [{"kind": ""}]}) as r:
                assert r.status == 400
                assert "signals.0.kind" in await r.text()

            now = utcnow()
            campaign = {
                "name": "Filter replenishment",
                "cohorts": ["profile:tv"],
                "offers": [
                    {
                        "type": "replenishment",
                        "title": "Purifier filter -30%",
                        "category": "purifier_filter",
                        "price": 199.0,
                        "discount": 0.3,
                        "surfaces": ["tv_home_banner"],
                        "starts_at": format_time(now - timedelta(minutes=1)),
                        "expires_at": format_time(now + timedelta(days=2)),
                    }
                ],
            }
            async with http.post(f"{gw}/v1/campaigns", json=campaign, headers=auth) as r:
                assert r.status == 201, await r.text()
                campaign_id = (await r.json())["id"]
            async with http.post(f"{gw}/v1/campaigns/{campaign_id}/launch", headers=auth) as r:
                assert r.status == 200, await r.text()

            async def offered() -> list[dict[str, Any]]:
                async with http.get(
                    f"{dev}/v1/offers", params={"surface": "tv_home_banner", "limit": "3"}
                ) as r:
                    return list((await r.json())["offers"])

            offers = await _eventually(offered)
            assert offers[0]["title"] == "Purifier filter -30%"
            assert 0.0 <= offers[0]["score"] <= 1.0 and offers[0]["reasons"]
            outcome = {"offer_id": offers[0]["id"], "kind": "click", "surface": "tv_home_banner"}
            async with http.post(f"{dev}/v1/outcomes", json=outcome) as r:
                assert r.status == 202, await r.text()

            async def stored() -> bool:
                async with http.get(f"{gw}/v1/devices/tv-e2e-0001/export", headers=auth) as r:
                    if r.status != 200:
                        return False
                    export = await r.json()
                got = sorted(s["id"] for s in export["signals"])
                return got == sorted(ids) and len(export["outcomes"]) == 1

            await _eventually(stored)
            async with http.get(f"{gw}/v1/campaigns/{campaign_id}/stats", headers=auth) as r:
                stats = await r.json()
            assert stats["clicks"] == 1
        assert _stop(agent, agent_log) == 0
        assert _stop(gateway, gw_log) == 0
    finally:
        for proc in (agent, gateway):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
