"""`edgemart model retrain` against a real gateway: a candidate better than the current model
on the held-out devices is registered (not rolled out); one worse is refused with one line
naming both figures and a non-zero exit, and nothing is registered."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from cloud_gateway.db.ingest import store_batch
from cloud_gateway.db.store import Store
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from models.cli import main
from models.layout import DEFAULT_DIR, MANIFEST_FILE
from models.publish import rollout, upload
from models.retrain import HOLDOUT_SALT, CandidateRefused, retrain
from protocol.assign import bucket
from protocol.envelopes import Batch, Outcome
from protocol.ids import new_id, utcnow
from simulators.brokers import MosquittoProcess
from tests.support.builders import onnx_bytes
from tests.support.gateway_world import gateway_settings

pytestmark = pytest.mark.integration

DEVICES = 160
SHOWN = 25
TRUE, DRIFT = 3, 7
"""Clicks follow feature TRUE (on held-out devices always; on training devices, in the
drifted logs, feature DRIFT instead)."""


def shipped() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEFAULT_DIR / MANIFEST_FILE).read_text())
    return doc


def write_logs(data_dir: Path, *, drifted: bool, seed: int) -> None:
    """A gateway store whose devices logged scaled features (shipped spec, model v1) and
    clicked with probability sigmoid(2 x[k] - 1.5)."""
    data_dir.mkdir(parents=True)
    store = Store(data_dir / "gateway.db")
    rng = np.random.default_rng(seed)
    width = len(shipped()["feature_spec"]["features"])
    now = utcnow()
    for d in range(DEVICES):
        device = f"tv-retrain-{d:03d}"
        held_out = bucket(device, HOLDOUT_SALT) < 0.2
        k = TRUE if held_out or not drifted else DRIFT
        outcomes = []
        for j in range(SHOWN):
            x = rng.normal(size=width)
            kinds = ["impression"]
            if rng.random() < 1 / (1 + math.exp(-(2 * x[k] - 1.5))):
                kinds.append("click")
            outcomes += [
                Outcome(
                    id=new_id(),
                    offer_id=f"o{j}",
                    campaign_id="c1",
                    kind=kind,
                    at=now,
                    surface="tv_home_banner",
                    model_version=1,
                    features=[round(float(v), 5) for v in x] if kind == "impression" else None,
                )
                for kind in kinds
            ]
        batch = Batch(
            device_id=device,
            seq=1,
            sent_at=now,
            agent_version="t",
            model_version=1,
            outcomes=outcomes,
        )
        assert store_batch(store, device, batch, now)
    store.close()


async def register_logistic(base: str, token: str, version: int, weight: float) -> None:
    """A model scoring sigmoid(weight x[TRUE]) in the shipped spec, rolled out to all."""
    width = len(shipped()["feature_spec"]["features"])
    weights = [0.0] * width
    weights[TRUE] = weight
    data = onnx_bytes(weights, -1.5)

    manifest = {k: v for k, v in shipped().items() if k not in ("kid", "sig", "url", "rollout")}
    manifest.update(
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        expires_at="2099-01-01T00:00:00.000Z",
    )
    await upload(base, token, manifest, data)
    await rollout(base, token, version, percent=100)


async def test_retrain_registers_a_better_candidate_and_refuses_a_worse_one(
    own_mosquitto: MosquittoProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = gateway_settings(tmp_path, own_mosquitto)
    steady, drifted = tmp_path / "steady", tmp_path / "drifted"
    await asyncio.to_thread(write_logs, steady, drifted=False, seed=1)
    await asyncio.to_thread(write_logs, drifted, drifted=True, seed=2)
    async with asyncio.timeout(240), Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        base = f"http://127.0.0.1:{gw.http_port}"
        # the fleet runs a model ranking backwards: the retrained candidate beats it
        await register_logistic(base, token, 2, -2.0)
        result, registered = await retrain(base, token, steady, tmp_path / "w1", family="logistic")
        assert (registered["version"], result.version, result.current_version) == (3, 3, 2)
        assert result.candidate_auc > 0.7 > 0.3 > result.current_auc
        assert result.holdout > 0 and result.train > 3 * result.holdout
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base, headers=headers) as http:
            async with http.get("/v1/models/3") as resp:
                doc = await resp.json()
            assert doc["rollouts"] == {}  # a candidate: registered, not rolled out

            # the fleet now runs the truth; a candidate trained on drifted logs is worse
            await register_logistic(base, token, 4, 2.0)
            with pytest.raises(CandidateRefused) as refused:
                await retrain(base, token, drifted, tmp_path / "w2", family="logistic")
            assert refused.value.candidate < refused.value.current
            token_file = tmp_path / "token"
            await asyncio.to_thread(token_file.write_text, token)
            argv = [
                "retrain",
                "--gateway",
                base,
                "--token-file",
                str(token_file),
                "--data-dir",
                str(drifted),
                "--work",
                str(tmp_path / "w3"),
                "--family",
                "logistic",
            ]
            capsys.readouterr()
            assert await asyncio.to_thread(main, argv) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1
            assert err[0].startswith("error: candidate refused: held-out AUC ")
            assert "current model v4's" in err[0]
            async with http.get("/v1/models") as resp:
                versions = [m["version"] for m in (await resp.json())["models"]]
            assert versions == [2, 3, 4]  # nothing registered for the refused candidates
