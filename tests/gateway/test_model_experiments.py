"""Model experiments on a real gateway store (SQLite here, PostgreSQL in the integration
tier): outcomes come in through the gateway's ingest path, logged with the model version
each device ran by the stable split; a candidate that hurts conversion is rolled back through
the halt path, a better one is promoted; decisions are taken once and audited. The pure
statistics and the split are tested in `test_experiment_stats.py` (fast tier)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud_gateway.api.schemas import ExperimentList, ExperimentOut
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.campaigns import insert_campaign
from cloud_gateway.db.postgres import PostgresDatabase
from cloud_gateway.db.store import Database
from cloud_gateway.errors import Conflict, InvalidInput, NotFound
from cloud_gateway.ingest.service import AckBatcher, Ingestor
from cloud_gateway.registry.bodies import ExperimentIn, RolloutIn, StopIn
from cloud_gateway.registry.experiments import experiment_id, in_candidate
from cloud_gateway.registry.service import ModelRegistry
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.runtime.wiring import Wiring
from cloud_gateway.security.auth import create_token
from models.layout import DEFAULT_DIR
from models.publish import prepare_manifest, rollout, upload
from protocol import codec
from protocol.envelopes import Batch, Outcome
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from protocol.topics import Topics
from simulators.brokers import MosquittoProcess
from tests.support.builders import SURFACE
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration  # ~1.5 s: 80 batches ingested, 3 models checked

TOPICS = Topics("t/v1")
SIGNER = Signer.generate("gw-test")
CAMPAIGN = "camp-exp"
PRICE = 30.0


@dataclass
class Rig:
    models: ModelRegistry
    ingestor: Ingestor
    published: list[tuple[str, dict[str, object]]]
    db: Backend[Session]
    name: str
    hours: list[float]
    """The store clock runs this many hours ahead of the wall clock."""


@pytest.fixture
async def rig(tmp_path: Path, gateway_db: str | None) -> AsyncIterator[Rig]:
    hours = [0.0]

    def clock() -> datetime:
        return utcnow() + timedelta(hours=hours[0])

    backend: Backend[Session] = (
        PostgresDatabase(gateway_db, clock=clock)
        if gateway_db is not None
        else Database(tmp_path / "gateway.db", clock=clock)
    )
    db = await backend.open()
    published: list[tuple[str, dict[str, object]]] = []

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        published.append((topic, json.loads(payload)))

    counters: Counter[str] = Counter()
    wiring = Wiring(db, SIGNER, TOPICS, publish, counters)
    models = ModelRegistry(wiring, models_dir=tmp_path / "models")

    def no_ack(topic: str, payload: bytes) -> None:
        pass

    acks = AckBatcher(TOPICS, no_ack, counters, 0, signer=SIGNER)
    ingestor = Ingestor(TOPICS, db, acks=acks, counters=counters)
    now = format_time(utcnow())
    offers = [{"id": "offer-exp", "price": PRICE}]
    doc = {"id": CAMPAIGN, "name": "exp", "state": "active", "offers": offers}
    await db.call(insert_campaign, {**doc, "created_at": now, "updated_at": now})
    manifest, _ = await asyncio.to_thread(prepare_manifest, DEFAULT_DIR, version=1)
    try:
        yield Rig(models, ingestor, published, db, str(manifest["name"]), hours)
    finally:
        await db.close()


async def register(rig: Rig, version: int) -> None:
    manifest, data = await asyncio.to_thread(prepare_manifest, DEFAULT_DIR, version=version)
    await rig.models.register(manifest, data, "token:ops")


async def send_outcomes(
    ingestor: Ingestor,
    topics: Topics,
    devices: list[str],
    exp: str,
    versions: tuple[int, int],
    rates: tuple[float, float],
    *,
    seq: int,
    impressions: int,
    seed: int,
) -> Counter[int]:
    """Each device logs `impressions` impressions with the model its arm runs (the split the
    agent computes), converting at its arm's rate; through the ingest path. Returns the
    impressions per version."""
    rng = random.Random(seed)
    shown: Counter[int] = Counter()
    for device in devices:
        arm = 1 if in_candidate(device, exp, 0.5) else 0
        version = versions[arm]
        now = utcnow()
        outcomes = []
        for _ in range(impressions):
            kinds = ["impression"] + (["click", "conversion"] if rng.random() < rates[arm] else [])
            outcomes += [
                Outcome(
                    id=new_id(),
                    offer_id="offer-exp",
                    campaign_id=CAMPAIGN,
                    kind=kind,
                    at=now,
                    surface=SURFACE,
                    model_version=version,
                )
                for kind in kinds
            ]
        batch = Batch(
            device_id=device,
            seq=seq,
            sent_at=now,
            agent_version="0.1.0",
            model_version=version,
            outcomes=outcomes,
        )
        await ingestor.handle(topics.batch(device), codec.encode(batch))
        shown[version] += impressions
    return shown


def latest_manifest(rig: Rig) -> dict[str, object]:
    return rig.published[-1][1]


async def test_a_worse_candidate_is_rolled_back_on_conversion_and_a_better_one_promoted(
    rig: Rig,
) -> None:
    await register(rig, 2)
    await register(rig, 3)
    await rig.models.rollout(2, RolloutIn(percent=100), "http://gw")
    body = ExperimentIn(share=0.5, min_impressions=300, alpha=0.05)
    started = await rig.models.experiments.start(3, body, "http://gw", "token:ops")
    exp = experiment_id(rig.name, 3)
    assert (started["id"], started["control"], started["candidate"]) == (exp, 2, 3)
    assert (started["state"], started["share"], started["verdict"]) == ("running", 0.5, None)
    assert latest_manifest(rig)["version"] == 3
    assert latest_manifest(rig)["rollout"] == 50
    with pytest.raises(Conflict, match="already had an experiment"):
        await rig.models.experiments.start(3, body, "http://gw", "token:ops")

    devices = [f"tv-exp-{i:03d}" for i in range(40)]
    # a few devices: below the minimum impressions, no verdict however wide the gap
    await send_outcomes(
        rig.ingestor, TOPICS, devices[:4], exp, (2, 3), (0.12, 0.02), seq=1, impressions=30, seed=1
    )
    assert await rig.models.experiments.decide_due() == []
    shown = await send_outcomes(
        rig.ingestor, TOPICS, devices, exp, (2, 3), (0.12, 0.02), seq=2, impressions=60, seed=2
    )
    # two workers on the same database look at once: one decides, once
    other = ModelRegistry(rig.models.wiring, models_dir=rig.models.models_dir)
    first, second = await asyncio.gather(
        rig.models.experiments.decide_due(), other.experiments.decide_due()
    )
    assert sorted(first + second) == [exp]
    assert await rig.models.experiments.decide_due() == []
    assert await other.experiments.decide_due() == []
    republished = [topic for topic, m in rig.published if m["version"] == 4]
    assert len(republished) == len(set(republished)) > 0  # one halt: each profile once

    doc = (await rig.models.get(3))["experiment"]
    assert doc["state"] == "rolled_back"
    assert "hurts conversion" in doc["verdict"]
    assert doc["decided_at"] is not None
    control_arm, candidate_arm = doc["arms"]
    assert (control_arm["model_version"], candidate_arm["model_version"]) == (2, 3)
    assert candidate_arm["impressions"] == shown[3] + 30 * sum(
        in_candidate(d, exp, 0.5) for d in devices[:4]
    )
    assert control_arm["devices"] + candidate_arm["devices"] == 40
    for arm in doc["arms"]:
        conv = arm["conversion"]
        assert conv["low"] <= conv["value"] <= conv["high"]
        assert conv["value"] == pytest.approx(arm["conversions"] / arm["impressions"], abs=1e-6)
        assert arm["revenue_per_1000"] == pytest.approx(
            1000 * PRICE * arm["conversions"] / arm["impressions"], rel=1e-5
        )
        assert arm["ctr"]["value"] == pytest.approx(arm["clicks"] / arm["impressions"], abs=1e-6)
    assert candidate_arm["conversion"]["high"] < control_arm["conversion"]["low"]
    # rolled back through the halt path: the control republished as v4 to every device
    halt = (await rig.models.get(3))["halt"]
    assert halt["replacement"] == 4
    assert "experiment" in halt["reason"]
    assert (latest_manifest(rig)["version"], latest_manifest(rig)["rollout"]) == (4, 100)
    assert (await rig.models.get(4))["manifest"]["sha256"] == (await rig.models.get(2))["manifest"][
        "sha256"
    ]

    # a better candidate against the new control: promoted to the whole cohort
    await register(rig, 5)
    with pytest.raises(InvalidInput, match="older"):
        await rig.models.experiments.start(5, ExperimentIn(control=5), "http://gw", "token:ops")
    await rig.models.experiments.start(5, body, "http://gw", "token:ops")
    exp5 = experiment_id(rig.name, 5)
    await send_outcomes(
        rig.ingestor, TOPICS, devices, exp5, (4, 5), (0.03, 0.12), seq=3, impressions=60, seed=3
    )
    assert await rig.models.experiments.decide_due() == [exp5]
    doc5 = (await rig.models.get(5))["experiment"]
    assert (doc5["state"], doc5["control"]) == ("promoted", 4)
    assert "candidate wins" in doc5["verdict"]
    assert (latest_manifest(rig)["version"], latest_manifest(rig)["rollout"]) == (5, 100)
    assert (await rig.models.get(5))["halt"] is None

    listed = await rig.models.experiments.list()
    assert [(e["id"], e["state"]) for e in listed] == [(exp, "rolled_back"), (exp5, "promoted")]
    assert [m.get("experiment", {}).get("state") for m in await rig.models.list()] == [
        None,
        "rolled_back",
        None,
        "promoted",
    ]
    rows = await rig.db.call(audit_log, 50)
    decided = [
        (r["target"], json.loads(r["detail"])["state"])
        for r in rows
        if r["action"] == "model.experiment.decide"
    ]
    assert sorted(decided) == [("3", "rolled_back"), ("5", "promoted")]
    assert any(r["action"] == "model.experiment.start" and r["who"] == "token:ops" for r in rows)


async def test_no_verdict_by_max_hours_stops_the_experiment_and_withdraws_the_candidate(
    rig: Rig,
) -> None:
    for version in (2, 3):
        await register(rig, version)
    await rig.models.rollout(2, RolloutIn(cohort="profile:tv", percent=100), "http://gw")
    body = ExperimentIn(cohort="profile:tv", share=0.2, max_hours=24, min_impressions=100)
    started = await rig.models.experiments.start(3, body, "http://gw", "token:ops")
    assert (started["share"], latest_manifest(rig)["rollout"]) == (0.2, 20)
    devices = [f"tv-stop-{i:03d}" for i in range(20)]
    await send_outcomes(
        rig.ingestor,
        TOPICS,
        devices,
        started["id"],
        (2, 3),
        (0.05, 0.05),
        seq=1,
        impressions=20,
        seed=5,
    )
    rig.hours[0] = 23.9
    assert await rig.models.experiments.decide_due() == []
    rig.hours[0] = 24.1
    assert await rig.models.experiments.decide_due() == [started["id"]]
    doc = (await rig.models.get(3))["experiment"]
    assert doc["state"] == "stopped"
    assert doc["verdict"].startswith("no verdict after 24 h")
    # withdrawn: the control republished as v4 to the tv cohort, as a halt does
    assert (latest_manifest(rig)["version"], latest_manifest(rig)["rollout"]) == (4, 100)
    assert rig.published[-1][0] == "t/v1/models/tv/manifest"


EXPERIMENT_KEYS = {
    "id",
    "control",
    "candidate",
    "share",
    "state",
    "verdict",
    "decided_at",
    "started_at",
    "arms",
    "stop",
}
ARM_KEYS = {
    "model_version",
    "devices",
    "impressions",
    "clicks",
    "conversions",
    "revenue_per_1000",
    "ctr",
    "conversion",
}


async def test_the_api_starts_an_experiment_and_the_gateways_loop_rolls_it_back(
    own_mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    settings = gateway_settings(tmp_path, own_mosquitto, experiment_tick_s=0.2)
    async with asyncio.timeout(120), Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        base = f"http://127.0.0.1:{gw.http_port}"
        for version in (2, 3):
            manifest, data = await asyncio.to_thread(prepare_manifest, DEFAULT_DIR, version=version)
            await upload(base, token, manifest, data)
        await rollout(base, token, 2, percent=100)
        async with aiohttp.ClientSession(base) as anon:
            resp = await anon.post("/v1/models/3/experiment", json={"share": 0.5})
            assert resp.status == 401
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base, headers=auth) as http:
            for bad, field in (
                ({"share": 1.5}, "share"),
                ({"alpha": 0}, "alpha"),
                ({"metric": "clicks"}, "metric"),
                ({"bogus": 1}, "bogus"),
            ):
                resp = await http.post("/v1/models/3/experiment", json=bad)
                assert resp.status == 400, await resp.text()
                assert field in json.dumps(await resp.json())
            assert (await http.post("/v1/models/9/experiment", json={})).status == 404
            resp = await http.post(
                "/v1/models/3/experiment", json={"share": 0.5, "min_impressions": 300}
            )
            assert resp.status == 201, await resp.text()
            started = await resp.json()
            assert set(started) == EXPERIMENT_KEYS
            async with http.get("/v1/models/3") as resp:
                doc = (await resp.json())["experiment"]
            assert set(doc) == EXPERIMENT_KEYS and doc["state"] == "running"
            assert [set(arm) for arm in doc["arms"]] == [ARM_KEYS, ARM_KEYS]
            assert set(doc["arms"][0]["ctr"]) == {"value", "low", "high"}

            devices = [f"tv-api-{i:03d}" for i in range(40)]
            await send_outcomes(
                gw.parts.ingestor,
                settings.topics,
                devices,
                doc["id"],
                (2, 3),
                (0.12, 0.02),
                seq=1,
                impressions=60,
                seed=4,
            )

            async def decided() -> dict[str, Any] | None:
                async with http.get("/v1/experiments") as resp:
                    (exp,) = (await resp.json())["experiments"]
                return exp if exp["state"] != "running" else None

            exp = await eventually(decided, timeout=30, what="the loop decides")
            assert exp["state"] == "rolled_back"
            assert "hurts conversion" in exp["verdict"]
            async with http.get("/v1/models/3") as resp:
                assert (await resp.json())["halt"]["replacement"] == 4


async def test_an_operator_stops_experiments_by_hand_once_across_workers(rig: Rig) -> None:
    """`stop`: a rollback takes the halt path a losing verdict takes, a promotion the rollout a
    winning one takes; either ends `stopped` with who, why and the arms at that moment; two
    workers stopping at once act once; an ended or unknown experiment is refused."""
    for version in (2, 3):
        await register(rig, version)
    await rig.models.rollout(2, RolloutIn(percent=100), "http://gw")
    body = ExperimentIn(share=0.5, min_impressions=10_000)
    started = await rig.models.experiments.start(3, body, "http://gw", "token:ops")
    exp = started["id"]
    devices = [f"tv-halt-{i:03d}" for i in range(20)]
    shown = await send_outcomes(
        rig.ingestor, TOPICS, devices, exp, (2, 3), (0.05, 0.05), seq=1, impressions=20, seed=6
    )
    other = ModelRegistry(rig.models.wiring, models_dir=rig.models.models_dir)
    stop = StopIn(outcome="rollback", reason="crash reports from the field")
    results = await asyncio.gather(
        rig.models.experiments.stop(exp, stop, "token:alice"),
        other.experiments.stop(exp, stop, "token:bob"),
        return_exceptions=True,
    )
    (doc,) = [r for r in results if isinstance(r, dict)]
    (refused,) = [r for r in results if isinstance(r, Conflict)]
    assert "already ended (stopped)" in str(refused) or "being decided" in str(refused)
    assert doc["state"] == "stopped"
    assert doc["stop"]["outcome"] == "rollback"
    assert doc["stop"]["reason"] == "crash reports from the field"
    assert doc["stop"]["by"] in ("token:alice", "token:bob")
    assert [arm["impressions"] for arm in doc["arms"]] == [shown[2], shown[3]]
    # the halt path, once: the control republished as v4, each profile once
    republished = [topic for topic, m in rig.published if m["version"] == 4]
    assert len(republished) == len(set(republished)) > 0
    halt = (await rig.models.get(3))["halt"]
    assert (halt["replacement"], "crash reports" in halt["reason"]) == (4, True)
    # ended: a second stop is a conflict naming the state; the loop leaves it alone
    with pytest.raises(Conflict, match=r"already ended \(stopped\)"):
        await rig.models.experiments.stop(exp, stop, "token:alice")
    assert await rig.models.experiments.decide_due() == []
    with pytest.raises(NotFound):
        await rig.models.experiments.stop("model:nope:9", stop, "token:alice")
    # promote by hand: the candidate re-signed at 100 % of the cohort
    await register(rig, 5)
    exp5 = (await rig.models.experiments.start(5, body, "http://gw", "token:ops"))["id"]
    promote = StopIn(outcome="promote", reason="  good enough  ")
    doc5 = await rig.models.experiments.stop(exp5, promote, "token:alice")
    assert (doc5["state"], doc5["stop"]) == (
        "stopped",
        {"by": "token:alice", "outcome": "promote", "reason": "good enough"},
    )
    assert (latest_manifest(rig)["version"], latest_manifest(rig)["rollout"]) == (5, 100)
    assert (await rig.models.get(5))["halt"] is None
    listed = {e["id"]: e for e in await rig.models.experiments.list()}
    assert listed[exp5]["stop"]["outcome"] == "promote"
    assert listed[exp]["stop"]["outcome"] == "rollback"
    rows = await rig.db.call(audit_log, 50)
    stops = [
        (r["who"], json.loads(r["detail"])) for r in rows if r["action"] == "model.experiment.stop"
    ]
    assert sorted((who, d["stop_outcome"]) for who, d in stops) == sorted(
        [(doc["stop"]["by"], "rollback"), ("token:alice", "promote")]
    )
    assert not any(r["action"] == "model.experiment.decide" for r in rows)


async def test_the_api_stops_an_experiment_and_refuses_bad_bodies_unknown_and_ended_ones(
    own_mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    settings = gateway_settings(tmp_path, own_mosquitto)
    async with asyncio.timeout(120), Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        base = f"http://127.0.0.1:{gw.http_port}"
        for version in (2, 3):
            manifest, data = await asyncio.to_thread(prepare_manifest, DEFAULT_DIR, version=version)
            await upload(base, token, manifest, data)
        await rollout(base, token, 2, percent=100)
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base, headers=auth) as http:
            resp = await http.post("/v1/models/3/experiment", json={"share": 0.5})
            assert resp.status == 201, await resp.text()
            exp = (await resp.json())["id"]
            path = f"/v1/experiments/{exp}/stop"
            async with aiohttp.ClientSession(base) as anon:
                resp = await anon.post(path, json={"outcome": "rollback", "reason": "x"})
                assert resp.status == 401
            for bad, field in (
                ({"outcome": "rollback"}, "reason"),
                ({"outcome": "rollback", "reason": "  "}, "reason"),
                ({"outcome": "rollback", "reason": "x" * 501}, "reason"),
                ({"outcome": "pause", "reason": "x"}, "outcome"),
                ({"outcome": "promote", "reason": "x", "bogus": 1}, "bogus"),
            ):
                resp = await http.post(path, json=bad)
                assert resp.status == 400, await resp.text()
                assert field in json.dumps((await resp.json())["errors"])
            body = {"outcome": "rollback", "reason": "hurts the checkout flow"}
            assert (await http.post("/v1/experiments/model:nope:9/stop", json=body)).status == 404
            resp = await http.post(path, json=body)
            assert resp.status == 200, await resp.text()
            stopped = await resp.json()
            assert set(stopped) == EXPERIMENT_KEYS
            ExperimentOut.model_validate(stopped)  # what /openapi.json promises
            assert stopped["state"] == "stopped"
            assert stopped["stop"] == {
                "by": stopped["stop"]["by"],
                "outcome": "rollback",
                "reason": "hurts the checkout flow",
            }
            resp = await http.post(path, json={**body, "outcome": "promote"})
            assert resp.status == 409
            assert "already ended (stopped)" in (await resp.json())["detail"]
            async with http.get("/v1/experiments") as resp:
                (listed,) = ExperimentList.model_validate(await resp.json()).experiments
            assert (listed.state, listed.stop) == ("stopped", ExperimentOut(**stopped).stop)
            async with http.get("/v1/models/3") as resp:
                assert (await resp.json())["halt"]["replacement"] == 4
