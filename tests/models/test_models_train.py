"""Training, export and evaluation end to end: real onnxruntime sessions on the files written."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.build_default import HOLDOUT_LOGS, TRAIN_LOGS, BuildResult, build_default
from models.errors import LogFormatError
from models.evaluate import auc
from models.features import FEATURE_NAMES, FEATURE_NAMES_V2, PERSONAL
from models.layout import DEFAULT_DIR, MANIFEST_FILE, MODEL_FILE
from models.logs import read_examples
from models.train import scale_features, train
from protocol.codec import validate
from protocol.envelopes import ModelManifest

FILES = (MODEL_FILE, MANIFEST_FILE, "evaluation.json")


@dataclass(frozen=True)
class Built:
    first: Path
    second: Path
    logs: Path
    result: BuildResult


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("build")
    result = build_default(root / "a", seed=11, households=3000, logs_dir=root / "logs")
    build_default(root / "b", seed=11, households=3000)
    return Built(root / "a", root / "b", root / "logs", result)


def _session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow  # trains and exports the model twice (~20 s): the slow tier
def test_same_seed_rebuilds_byte_identical_files(built: Built) -> None:
    for name in FILES:
        assert (built.first / name).read_bytes() == (built.second / name).read_bytes(), name


@pytest.mark.slow  # trains and exports the model twice (~20 s): the slow tier
def test_onnxruntime_scores_equal_the_training_time_predictions(built: Built) -> None:
    holdout = read_examples(built.logs / HOLDOUT_LOGS, FEATURE_NAMES_V2)
    scaled = scale_features(holdout.features, built.result.trained.spec).astype(np.float32)
    (onnx_scores,) = _session(built.first / MODEL_FILE).run(["score"], {"features": scaled})
    assert onnx_scores.shape == (len(holdout), 1)
    expected = built.result.trained.model.predict(scaled)
    np.testing.assert_allclose(onnx_scores[:, 0], expected, rtol=0, atol=1e-5)


@pytest.mark.slow  # trains and exports the model twice (~20 s): the slow tier
def test_graph_is_the_documented_contract(built: Built) -> None:
    model = onnx.load(str(built.first / MODEL_FILE))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    session = _session(built.first / MODEL_FILE)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1]) == (
        "features",
        "tensor(float)",
        len(FEATURE_NAMES_V2),
    )
    assert (out.name, out.type) == ("score", "tensor(float)")


@pytest.mark.slow  # trains and exports the model twice (~20 s): the slow tier
def test_manifest_validates_and_describes_the_file(built: Built) -> None:
    raw = json.loads((built.first / MANIFEST_FILE).read_text())
    manifest = validate(raw, ModelManifest)
    data = (built.first / MODEL_FILE).read_bytes()
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.size == len(data)
    assert not {"kid", "sig"} & set(raw)
    assert (manifest.name, manifest.version) == ("default", 1)
    assert manifest.profiles == ["hub", "tv", "phone", "speaker"]
    assert manifest.expires_at.year == 2036
    assert manifest.created_at == read_examples(built.logs / TRAIN_LOGS).latest_at
    spec = manifest.feature_spec
    assert (spec.version, spec.names) == (2, list(FEATURE_NAMES_V2))
    assert {f.name for f in spec.features if f.personal} == PERSONAL
    assert all(f.default == f.mean for f in spec.features)


@pytest.mark.slow  # trains and exports the model twice (~20 s): the slow tier
def test_model_beats_random_and_popularity_on_held_out_households(built: Built) -> None:
    metrics = json.loads((built.first / "evaluation.json").read_text())["metrics"]
    assert metrics["model"]["auc"] > 0.6
    assert metrics["model"]["auc"] >= metrics["popularity"]["auc"]
    assert metrics["model"]["log_loss"] < metrics["constant"]["log_loss"]
    assert abs(metrics["random"]["auc"] - 0.5) < 0.05
    held = {e.split("-")[0] for e in read_examples(built.logs / HOLDOUT_LOGS).device_ids}
    trained = {e.split("-")[0] for e in read_examples(built.logs / TRAIN_LOGS).device_ids}
    assert held
    assert not held & trained


def test_shipped_default_model_is_consistent() -> None:
    data = (DEFAULT_DIR / MODEL_FILE).read_bytes()
    assert len(data) < 1_000_000
    manifest = validate(json.loads((DEFAULT_DIR / MANIFEST_FILE).read_text()), ModelManifest)
    assert (manifest.sha256, manifest.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert manifest.feature_spec.names == list(FEATURE_NAMES_V2)  # v2: household features
    assert manifest.feature_spec.version == 2
    scores = _session(DEFAULT_DIR / MODEL_FILE).run(
        ["score"], {"features": np.zeros((3, len(FEATURE_NAMES_V2)), dtype=np.float32)}
    )[0]
    assert scores.shape == (3, 1)
    assert ((scores > 0) & (scores < 1)).all()
    evaluation = json.loads((DEFAULT_DIR / "evaluation.json").read_text())
    assert evaluation["model"]["sha256"] == manifest.sha256
    assert evaluation["metrics"]["model"]["auc"] > evaluation["metrics"]["popularity"]["auc"]


def test_a_bad_line_is_named(tmp_path: Path) -> None:
    logs = tmp_path / "logs.jsonl"
    good = {
        "device_id": "hh000001-tv",
        "profile": "tv",
        "offer_id": "o1",
        "campaign_id": "c",
        "features": dict.fromkeys(FEATURE_NAMES, 0),
        "kind": "click",
        "at": "2026-03-02T00:00:00.000Z",
    }
    bad = {**good, "features": {"offer.discount": 0.1}}
    logs.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(LogFormatError, match=r"logs.jsonl:2: missing field offer.log_price"):
        train(logs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2).filter(
        lambda rows: 0 < sum(c for _, c in rows) < len(rows)
    )
)
def test_auc_counts_ordered_pairs(rows: list[tuple[int, bool]]) -> None:
    scores = np.array([float(s) for s, _ in rows])
    clicked = np.array([float(c) for _, c in rows])
    pos, neg = scores[clicked == 1], scores[clicked == 0]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg)]
    assert auc(clicked, scores) == pytest.approx(sum(pairs) / len(pairs))
