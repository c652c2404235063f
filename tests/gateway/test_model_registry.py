"""The registry end to end: publish via the CLI library, roll out, a real agent swaps; export."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from agent.config import load_settings
from agent.runtime.agent import Agent
from cloud_gateway.db.ingest import store_batch
from cloud_gateway.db.store import Store
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from models.errors import ModelError
from models.export import export_logs, shipped_specs
from models.layout import DEFAULT_DIR
from models.logs import read_examples
from models.publish import prepare_manifest, publish, rollout, upload
from protocol.envelopes import Batch, ModelManifest, Outcome, OutcomeKind, TrustFile
from protocol.ids import new_id, utcnow
from protocol.signing import Verifier
from simulators.brokers import MosquittoProcess
from tests.support.agent_world import http as local_api
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_publish_rollout_and_a_real_agent_swaps_to_the_signed_model(
    own_mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    mosquitto = own_mosquitto  # a broker of its own: no state shared with other tests
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    async with asyncio.timeout(200), Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        base = f"http://127.0.0.1:{gw.http_port}"

        # bad uploads: no token, tampered bytes, then the good one, then a replay of its version
        manifest, data = prepare_manifest(DEFAULT_DIR, version=2)
        async with aiohttp.ClientSession(base) as anon:
            form = aiohttp.FormData()
            form.add_field("manifest", json.dumps(manifest))
            form.add_field("model", data, filename="model.onnx")
            assert (await anon.post("/v1/models", data=form)).status == 401
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base, headers=auth) as http:
            for content_type, body, says in (
                ("multipart/form-data", b"x", "multipart body: boundary missed"),
                ("multipart/form-data; boundary=zz", b"--zz\r\nno headers end", "header"),
            ):
                resp = await http.post(
                    "/v1/models", data=body, headers={"Content-Type": content_type}
                )
                assert resp.status == 400, await resp.text()
                assert says in (await resp.json())["detail"]
        with pytest.raises(ModelError, match="sha256"):
            await upload(base, token, manifest, data[:-1] + b"\0")
        with pytest.raises(ModelError, match="bytes"):
            await upload(base, token, manifest, data + b"\0")
        expired = {**manifest, "expires_at": "2020-01-01T00:00:00.000Z"}
        with pytest.raises(ModelError, match="expired"):
            await upload(base, token, expired, data)
        signed_up = {**manifest, "kid": "x", "sig": "y"}
        with pytest.raises(ModelError, match="kid/sig"):
            await upload(base, token, signed_up, data)

        result = await publish(base, token, DEFAULT_DIR, version=2, profiles=["tv", "hub"])
        assert result["registered"]["version"] == 2
        with pytest.raises(ModelError, match="409"):
            await publish(base, token, DEFAULT_DIR, version=2)
        with pytest.raises(ModelError, match="no such profile"):
            await rollout(base, token, 2, percent=10, cohort="profile:fridge")

        # the file is served without a token (devices check it against the signed manifest)
        async with aiohttp.ClientSession(base) as anon:
            resp = await anon.get("/v1/models/2/model.onnx")
            assert resp.status == 200
            assert await resp.read() == data
            assert (await anon.get("/v1/models/9/model.onnx")).status == 404

        # a real agent on the tv profile, subscribed to models/tv/manifest
        agent_settings = load_settings(
            "tv", "dev-models-01", mosquitto.url, tmp_path / "agent", 0, gw.trust_path
        )
        async with Agent(agent_settings) as agent:
            assert await agent.wait_connected(20)
            assert agent.model_version == 1
            # a rollout to a region this device is not in: signed for it, not fetched
            roll = await rollout(base, token, 2, percent=100, cohort="region:cn-east")
            assert roll["profiles"] == ["tv", "hub"]
            assert roll["manifest"]["cohorts"] == ["region:cn-east"]
            await eventually(
                lambda: agent.counters.get("model_update_not_in_cohort", 0) >= 1, timeout=30.0
            )
            assert agent.model_version == 1
            roll = await rollout(base, token, 2, percent=100, cohort="profile:tv")
            assert roll["profiles"] == ["tv"]
            await eventually(lambda: agent.model_version == 2, timeout=30.0)
            code, status = await local_api(agent, "GET", "/v1/status")
            assert code == 200, status
            assert status["model_version"] == 2
            assert status["model_update"]["state"] == "applied"
            assert status["model_update"]["report"]["status"] == "applied"
            assert status["model_update"]["report"]["version"] == 2
            assert status["counters"]["model_updates_applied"] == 1
            decision = await agent.decide("tv_home_banner")
            assert decision.model_version == 2

        # the retained manifest is signed by the gateway key and names the file
        trust = TrustFile.model_validate_json(gw.trust_path.read_text())
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.subscribe(settings.topics.model_manifest("tv"), qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
        assert isinstance(message.payload, bytes)
        retained = json.loads(message.payload)
        Verifier.from_public_keys(trust.keys).verify(retained)
        assert ModelManifest.model_validate(retained).url == f"{base}/v1/models/2/model.onnx"

        # the agent restarted keeps the swapped model (last good one on disk)
        async with Agent(agent_settings) as agent:
            assert agent.model_version == 2


def test_export_turns_logged_outcomes_into_training_lines(tmp_path: Path) -> None:
    data_dir = tmp_path / "gw"
    data_dir.mkdir()
    store = Store(data_dir / "gateway.db")
    spec = shipped_specs()[1]
    scaled = [0.5] * len(spec.features)
    now = utcnow()

    def outcome(
        kind: OutcomeKind,
        offer: str,
        at_s: int,
        features: list[float] | None,
        *,
        ghost: bool = False,
    ) -> Outcome:
        return Outcome(
            id=new_id(),
            offer_id=offer,
            campaign_id="c1",
            kind=kind,
            at=now + timedelta(seconds=at_s),
            surface="tv_home_banner",
            model_version=1,
            features=features,
            counterfactual=ghost,
        )

    outcomes = [
        outcome("impression", "o1", 0, scaled),
        outcome("click", "o1", 5, None),
        outcome("impression", "o1", 60, scaled),  # shown again, not clicked
        outcome("impression", "o2", 1, scaled),
        outcome("impression", "o3", 2, None),  # no logged features: skipped
        # a holdout device's impression, never shown: no click could follow, not a negative
        outcome("impression", "o4", 3, scaled, ghost=True),
        outcome("impression", "o1", 90, scaled, ghost=True),
    ]
    batch = Batch(
        device_id="dev-export-1",
        seq=1,
        sent_at=now,
        agent_version="t",
        model_version=1,
        outcomes=outcomes,
    )
    assert store_batch(store, "dev-export-1", batch, now)
    store.close()
    out = tmp_path / "logs.jsonl"
    stats = export_logs(data_dir, out, fallback=shipped_specs())
    assert (stats.written, stats.clicks, stats.skipped) == (
        3,
        1,
        {"no_features": 1, "counterfactual": 2},
    )
    with contextlib.closing(sqlite3.connect(data_dir / "gateway.db")) as stored:
        ghosts = stored.execute("SELECT count(*) FROM outcomes WHERE counterfactual = 1")
        assert ghosts.fetchone() == (2,)
    examples = read_examples(out)
    assert len(examples) == 3
    assert sorted(examples.clicked.tolist()) == [0.0, 0.0, 1.0]
    first = spec.features[0]
    assert examples.features[0, 0] == pytest.approx(0.5 * first.scale + first.mean, abs=1e-5)
    with pytest.raises(ModelError, match="no gateway database"):
        export_logs(tmp_path / "nowhere", out)
