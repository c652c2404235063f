"""Rollout health end to end (real Mosquitto, gateway, agents): a model that passes the
gateway's checks but fails the devices' health check halts its rollout, and the fleet keeps
or returns to the last good model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import load_settings
from agent.runtime.agent import Agent
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.backend import Session
from cloud_gateway.db.store import Database
from cloud_gateway.errors import Conflict
from cloud_gateway.registry.checks import Health
from cloud_gateway.registry.service import ModelRegistry, RolloutIn
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.runtime.wiring import Wiring
from cloud_gateway.security.auth import create_token
from models.layout import DEFAULT_DIR
from models.publish import prepare_manifest, rollout, upload
from protocol.envelopes import ModelUpdateReport
from protocol.ids import format_time, utcnow
from protocol.signing import Signer
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess
from tests.support.builders import onnx_bytes
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

DEVICES = 4


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
    own_mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(
        tmp_path, own_mosquitto, db=gateway_db, model_halt_fraction=0.05, model_halt_min_devices=2
    )
    async with asyncio.timeout(240), Gateway(settings) as gw, AsyncExitStack() as stack:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
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
        await eventually(lambda: all(a.model_version == 2 for a in agents), timeout=60.0)

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
        await eventually(lambda: gw.counters["model_rollouts_halted"] == 1, timeout=60.0)
        halted = await _get(base, token, "/v1/models/3")
        assert halted["halt"]["replacement"] == 4
        assert halted["health"]["failed"] >= 2
        assert halted["health"]["applied"] == 0
        replacement = await _get(base, token, "/v1/models/4")
        assert replacement["sha256"] == good["sha256"]
        assert replacement["rollouts"] == {"tv": {"cohort": "profile:tv", "percent": 100}}
        assert replacement["registered_by"] == "gateway:halt-replaces-v2"

        # every device ends on the last good model's file, none on v3
        await eventually(lambda: all(a.model_version == 4 for a in agents), timeout=60.0)
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


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[tuple[ModelRegistry, list[tuple[str, bytes]]]]:
    db = await Database(tmp_path / "gateway.db").open()
    published: list[tuple[str, bytes]] = []

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        assert retain
        published.append((topic, payload))

    try:
        yield (
            ModelRegistry(
                Wiring(db, Signer.generate("gw-test"), Topics("t/v1"), publish, Counter()),
                models_dir=tmp_path / "models",
                halt_fraction=0.05,
                halt_min_devices=2,
            ),
            published,
        )
    finally:
        await db.close()


async def test_rollout_rechecks_expiry_and_register_and_rollout_are_audited(
    registry: tuple[ModelRegistry, list[tuple[str, bytes]]],
) -> None:
    models, published = registry
    manifest, data = prepare_manifest(DEFAULT_DIR, version=2)
    await models.register(manifest, data, "token:ops")
    # time passes: the manifest registered yesterday has expired by the rollout
    past = format_time(utcnow() - timedelta(seconds=1))

    def expire(store: Session) -> None:
        with store.transaction():
            for row in store.rows("SELECT version, manifest FROM models"):
                doc = {**json.loads(row["manifest"]), "expires_at": past}
                store.conn.execute(
                    "UPDATE models SET manifest = ? WHERE version = ?",
                    [json.dumps(doc), row["version"]],
                )

    await models.wiring.db.call(expire)
    with pytest.raises(Conflict, match="expired"):
        await models.rollout(2, RolloutIn(percent=10), "http://gw", "token:ops")
    assert published == []

    manifest3, data3 = prepare_manifest(DEFAULT_DIR, version=3)
    await models.register(manifest3, data3, "token:ops")
    roll = await models.rollout(3, RolloutIn(cohort="region:cn-east", percent=20), "http://gw")
    assert roll["manifest"]["cohorts"] == ["region:cn-east"]
    assert roll["manifest"]["rollout"] == 20
    assert {topic for topic, _ in published} == {
        f"t/v1/models/{p}/manifest" for p in manifest3["profiles"]
    }
    rows = await models.wiring.db.call(audit_log, 10)
    actions = [(r["who"], r["action"], r["target"]) for r in rows]
    assert ("token:ops", "model.register", "2") in actions
    assert ("token:ops", "model.register", "3") in actions
    assert ("gateway", "model.rollout", "3") in actions
    assert ("token:ops", "model.rollout", "2") not in actions  # refused: not audited


async def test_without_an_earlier_good_model_a_halt_stops_the_rollout_at_zero(
    registry: tuple[ModelRegistry, list[tuple[str, bytes]]],
) -> None:
    models, published = registry
    manifest, data = prepare_manifest(DEFAULT_DIR, version=5)
    await models.register(manifest, data, "token:ops")
    await models.rollout(5, RolloutIn(cohort="profile:tv", percent=50), "http://gw")
    published.clear()
    report = ModelUpdateReport(version=5, status="failed", reason="health_failed")
    await models.record_health("dev-a1", report)
    await models.record_health("dev-a1", report)  # the same device twice counts once
    assert published == []
    await models.record_health("dev-a2", ModelUpdateReport(version=5, status="applied"))
    for device in ("dev-b1", "dev-b2", "dev-b3"):  # a version never registered: not a rollout
        await models.record_health(device, ModelUpdateReport(version=99, status="rolled_back"))
    assert models.wiring.counters["model_health_unknown_version"] == 3
    assert published == []
    await models.record_health("dev-a3", report)
    (topic, payload), *_ = published
    assert topic == "t/v1/models/tv/manifest"
    halted = json.loads(payload)
    assert (halted["version"], halted["rollout"]) == (5, 0)
    doc = await models.get(5)
    assert doc["health"] == {"applied": 1, "failed": 2, "rolled_back": 0, "reporting": 3}
    assert doc["halt"]["replacement"] is None
    assert doc["rollouts"] == {"tv": {"cohort": "profile:tv", "percent": 0}}
