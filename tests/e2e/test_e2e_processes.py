"""The whole loop as users run it: `edgemart gateway run` and `edgemart agent run` as real
processes, a real Mosquitto, the operator and the device app over real HTTP."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.api.owners import admin_headers
from protocol.ids import format_time, utcnow
from simulators.brokers import MosquittoProcess, free_port
from tests.support.processes import EDGEMART, spawn, start_gateway, stop, tail, wait_healthy
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_gateway_and_agent_processes_close_the_loop(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    gw_dir, dev_dir = tmp_path / "gw", tmp_path / "dev"
    gw_port, api_port = free_port(), free_port()
    gw_log, agent_log = tmp_path / "gateway.log", tmp_path / "agent.log"
    gateway = await start_gateway(own_mosquitto.url, gw_dir, gw_port, gw_log)
    agent = None
    try:
        assert (gw_dir / "trust.json").exists()
        token = subprocess.run(
            [*EDGEMART, "gateway", "token", "create", "--data-dir", str(gw_dir)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        assert token and "\n" not in token
        agent = spawn(
            [
                "agent",
                "run",
                "--profile",
                "tv",
                "--device-id",
                "tv-e2e-0001",
                "--broker",
                own_mosquitto.url,
                "--data-dir",
                str(dev_dir),
                "--api-port",
                str(api_port),
                "--trust",
                str(gw_dir / "trust.json"),
            ],
            agent_log,
        )
        await wait_healthy(f"http://127.0.0.1:{api_port}/healthz", agent, agent_log)
        dev = f"http://127.0.0.1:{api_port}"
        dev_auth = admin_headers(dev_dir)  # the token the agent wrote on its first start
        gw = f"http://127.0.0.1:{gw_port}"
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw}/v1/devices", headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
            consent = {"purposes": {"analytics": True, "personalization": True, "marketing": True}}
            async with http.put(f"{dev}/v1/consent", json=consent, headers=dev_auth) as r:
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
                async with http.post(f"{dev}/v1/signals", json=body, headers=dev_auth) as r:
                    assert r.status == 202, await r.text()
                    ids += (await r.json())["ids"]
            async with http.post(
                f"{dev}/v1/signals", json={"signals": [{"kind": ""}]}, headers=dev_auth
            ) as r:
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
                    f"{dev}/v1/offers",
                    params={"surface": "tv_home_banner", "limit": "3"},
                    headers=dev_auth,
                ) as r:
                    return list((await r.json())["offers"])

            offers = await eventually(offered)
            assert offers[0]["title"] == "Purifier filter -30%"
            assert 0.0 <= offers[0]["score"] <= 1.0 and offers[0]["reasons"]
            outcome = {"offer_id": offers[0]["id"], "kind": "click", "surface": "tv_home_banner"}
            async with http.post(f"{dev}/v1/outcomes", json=outcome, headers=dev_auth) as r:
                assert r.status == 202, await r.text()

            async def stored() -> bool:
                async with http.get(f"{gw}/v1/devices/tv-e2e-0001/export", headers=auth) as r:
                    if r.status != 200:
                        return False
                    export = await r.json()
                got = sorted(s["id"] for s in export["signals"])
                return got == sorted(ids) and len(export["outcomes"]) == 1

            await eventually(stored)
            async with http.get(f"{gw}/v1/campaigns/{campaign_id}/stats", headers=auth) as r:
                stats = await r.json()
            assert stats["clicks"] == 1
        assert stop(agent) == 0, f"the agent did not stop cleanly:\n{tail(agent_log)}"
        assert stop(gateway) == 0, f"the gateway did not stop cleanly:\n{tail(gw_log)}"
    finally:
        for proc in (agent, gateway):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
