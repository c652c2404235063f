"""Rollout health end to end (real Mosquitto, gateway, agents): a model that passes the
gateway's checks but fails the devices' health check halts its rollout, and the fleet keeps
or returns to the last good model."""

from __future__ import annotations

import asyncio
import hashlib
import math
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import load_settings
from agent.daemon import Agent
from cloud_gateway.auth import create_token
from cloud_gateway.config import GatewaySettings
from cloud_gateway.model_registry import Health
from cloud_gateway.service import Gateway
from edgemart.broker import MosquittoProcess
from models.build_default import DEFAULT_DIR
from models.publish import prepare_manifest, rollout, upload
from tests.test_agent_scoring import onnx_bytes

pytestmark = pytest.mark.integration

DEVICES = 4


async def _poll(check: Any, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _get(base: str, token: str, path: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base, headers=headers) as http, http.get(path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def test_halt_thresholds_need_both_a_count_and_a_share() -> None:
    assert not Health(applied=95, failed=4).should_halt(0.05, 5)  # 4 devices: too few
    assert Health(applied=95, failed=5).should_halt(0.05, 5)  # 5 of 100
    assert not Health(applied=1000, failed=3, rolled_back=2).should_halt(0.05, 5)  # 0.5 %
    assert Health(failed=2, rolled_back=3).should_halt(0.05, 5)
    assert not Health().should_halt(0.05, 1)


async def test_a_model_failing_the_device_health_check_halts_its_rollout(
    own_mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:10]
    settings = GatewaySettings(
        broker=own_mosquitto.url,
        data_dir=tmp_path / "gw",
        http_port=0,
        topic_root=f"t{tag}/v1",
        client_id=f"gw-{tag}",
        ack_delay_ms=2,
        model_halt_fraction=0.05,
        model_halt_min_devices=2,
    )
    async with asyncio.timeout(240), Gateway(settings) as gw, AsyncExitStack() as stack:
        token = await asyncio.to_thread(create_token, settings.data_dir)
        base = f"http://127.0.0.1:{gw.http_port}"
        agents: list[Agent] = []
        for i in range(DEVICES):
            agent_settings = load_settings(
                "tv", f"dev-health-{i:02d}", own_mosquitto.url, tmp_path / f"a{i}", 0, gw.trust_path
            )
            agents.append(await stack.enter_async_context(Agent(agent_settings)))
        for agent in agents:
            assert await agent.wait_connected(20)

        # v2: a good model everywhere
        good, good_data = prepare_manifest(DEFAULT_DIR, version=2)
        await upload(base, token, good, good_data)
        await rollout(base, token, 2, percent=100, cohort="profile:tv")
        await _poll(lambda: all(a.model_version == 2 for a in agents))

        # v3: opens in onnxruntime with the right input and width (the gateway takes it),
        # but scores NaN (every device's health check refuses it)
        width = len(good["feature_spec"]["features"])
        bad_data = onnx_bytes([0.0] * width, math.nan)
        bad = {
            **good,
            "name": "nan-model",
            "version": 3,
            "sha256": hashlib.sha256(bad_data).hexdigest(),
            "size": len(bad_data),
        }
        await upload(base, token, bad, bad_data)
        await rollout(base, token, 3, percent=100, cohort="profile:tv")

        # the gateway hears the failures, halts v3 and republishes v2's file as v4
        await _poll(lambda: gw.counters["model_rollouts_halted"] == 1)
        halted = await _get(base, token, "/v1/models/3")
        assert halted["halt"]["replacement"] == 4
        assert halted["health"]["failed"] >= 2
        assert halted["health"]["applied"] == 0
        replacement = await _get(base, token, "/v1/models/4")
        assert replacement["sha256"] == good["sha256"]
        assert replacement["rollouts"] == {"tv": {"cohort": "profile:tv", "percent": 100}}
        assert replacement["registered_by"] == "gateway:halt-replaces-v2"

        # every device ends on the last good model's file, none on v3
        await _poll(lambda: all(a.model_version == 4 for a in agents))
        assert all(a.model is not None and a.model.sha256 == good["sha256"] for a in agents)
        failed = [a for a in agents if a.counters["model_update_refused_health_failed"]]
        assert len(failed) >= 2
        for agent in failed:
            assert agent.model_updates is not None
            assert (3, bad["sha256"]) in agent.model_updates.refused

        # a halted version cannot be rolled out again
        with pytest.raises(Exception, match="halted"):
            await rollout(base, token, 3, percent=10, cohort="profile:tv")

        # audited: registrations, rollouts and the halt
        rows = (await _get(base, token, "/v1/audit?limit=50"))["entries"]
        actions = [(r["action"], r["target"]) for r in rows]
        assert ("model.register", "2") in actions
        assert ("model.register", "3") in actions
        assert ("model.rollout", "3") in actions
        assert ("model.halt", "3") in actions
        halt_row = next(r for r in rows if r["action"] == "model.halt")
        assert halt_row["detail"]["replacement"] == 4
