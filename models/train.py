"""Training: a model on logged examples, exported as ONNX plus a model manifest.

`train(logs, out_dir)` reads the gateway export (JSON lines, see `models.logs`), standardises
each feature with the training data's mean/std, fits either gradient-boosted trees
(`family="gbdt"`, see `models.gbdt`, seeded) or an L2-regularised logistic regression by
Newton's method (IRLS: no randomness), so reruns give the same bytes, and writes
`model.onnx` (input "features" `[N, F]` of already-scaled float32 values; output "score"
`[N, 1]`) and `manifest.json` (a `ModelManifest` without kid/sig).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.errors import ModelError
from models.features import FEATURE_NAMES, FEATURE_SETS, PROFILES, build_spec
from models.gbdt import GbdtModel, GbdtParams, fit_gbdt, gbdt_to_onnx
from models.layout import FAMILIES, MANIFEST_FILE, MODEL_FILE
from models.logs import Examples, FloatArray, read_examples
from protocol.envelopes import FeatureSpec, ModelManifest

OPSET = 17
IR_VERSION = 8  # the first IR version of opset 17; onnxruntime 1.18+ loads it
DEFAULT_EXPIRES_AT = datetime(2036, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True, eq=False)
class LogisticModel:
    """`sigmoid(scaled @ weights + bias)`; `scaled` is `(x - mean) / scale` per feature."""

    weights: FloatArray  # [F]
    bias: float

    def predict(self, scaled: npt.NDArray[np.floating[Any]]) -> FloatArray:
        return _sigmoid(np.asarray(scaled, dtype=np.float64) @ self.weights + self.bias)


"""Model families `write_model` can fit: boosted trees (the default) or logistic regression."""


@dataclass(frozen=True, slots=True, eq=False)
class TrainResult:
    model: LogisticModel | GbdtModel
    spec: FeatureSpec
    manifest: dict[str, Any]
    model_path: Path
    manifest_path: Path
    examples: int
    iterations: int


def _sigmoid(z: FloatArray) -> FloatArray:
    return np.asarray(np.exp(-np.logaddexp(0.0, -z)), dtype=np.float64)


def _short(value: float) -> float:
    """Six significant digits: a manifest that reads well and is the scaling actually used."""
    return float(f"{value:.6g}")


def fit_scaler(features: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-column mean and std (1 where a column is constant), rounded as the manifest has them."""
    mean = np.array([_short(m) for m in features.mean(axis=0)])
    std = features.std(axis=0)
    scale = np.array([_short(s) if s > 1e-9 else 1.0 for s in std])
    return mean, scale


def scale_features(features: FloatArray, spec: FeatureSpec) -> FloatArray:
    """`(x - mean) / scale` per column, as the agent computes model inputs."""
    mean = np.array([f.mean for f in spec.features])
    scale = np.array([f.scale for f in spec.features])
    return np.asarray((features - mean) / scale, dtype=np.float64)


def fit_logistic(
    scaled: FloatArray, clicked: FloatArray, *, l2: float = 1.0, max_iter: int = 50
) -> tuple[LogisticModel, int]:
    """L2-penalised (not the bias) logistic regression by Newton steps; returns the iterations."""
    n, f = scaled.shape
    design = np.column_stack([np.ones(n), scaled])
    penalty = np.full(f + 1, l2)
    penalty[0] = 0.0
    beta = np.zeros(f + 1)
    iteration = 0
    while iteration < max_iter:
        iteration += 1
        p = _sigmoid(design @ beta)
        gradient = design.T @ (p - clicked) + penalty * beta
        hessian = (design * (p * (1.0 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        beta = beta - step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return LogisticModel(weights=beta[1:].copy(), bias=float(beta[0])), iteration


def to_onnx(model: LogisticModel, names: tuple[str, ...] = FEATURE_NAMES) -> bytes:
    """The serialized ONNX graph of `model`; the same model gives the same bytes."""
    f = len(names)
    weights = numpy_helper.from_array(model.weights.astype(np.float32).reshape(f, 1), "weights")
    bias = numpy_helper.from_array(np.array([model.bias], dtype=np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "weights"], ["logit_raw"]),
            helper.make_node("Add", ["logit_raw", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "edgemart_logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[weights, bias],
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgemart.models",
        producer_version="1",
        doc_string="Logistic regression over scaled feature spec v1 inputs; score = P(click).",
    )
    proto.ir_version = IR_VERSION
    helper.set_model_props(proto, {"edgemart.features": ",".join(names)})
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def make_manifest(
    onnx_bytes: bytes,
    spec: FeatureSpec,
    *,
    created_at: datetime,
    name: str = "default",
    version: int = 1,
    profiles: tuple[str, ...] = PROFILES,
    expires_at: datetime = DEFAULT_EXPIRES_AT,
) -> dict[str, Any]:
    """The unsigned `ModelManifest` wire dict for a model file."""
    return ModelManifest(
        name=name,
        version=version,
        profiles=list(profiles),
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        size=len(onnx_bytes),
        feature_spec=spec,
        created_at=created_at,
        expires_at=expires_at,
    ).to_wire()


def train_examples(
    examples: Examples,
    *,
    l2: float = 1.0,
    family: str = "logistic",
    gbdt: GbdtParams | None = None,
    names: tuple[str, ...] = FEATURE_NAMES,
) -> tuple[LogisticModel | GbdtModel, FeatureSpec, int]:
    """Fit scaling and the model (`family` in FAMILIES) on in-memory examples whose feature
    columns are `names`."""
    if family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    if examples.clicked.min() == examples.clicked.max():
        raise ModelError("the logs need both clicks and impressions without one to train")
    mean, scale = fit_scaler(examples.features)
    spec = build_spec(mean.tolist(), scale.tolist(), names)
    scaled = scale_features(examples.features, spec)
    if family == "gbdt":
        params = gbdt or GbdtParams()
        return fit_gbdt(scaled, examples.clicked, params), spec, params.trees
    model, iterations = fit_logistic(scaled, examples.clicked, l2=l2)
    return model, spec, iterations


def train(logs: Path, out_dir: Path, *, spec_version: int = 1, **options: Any) -> TrainResult:
    """Train on the logged examples in `logs` with feature spec `spec_version`'s features
    (other options as for `write_model`)."""
    names = FEATURE_SETS[spec_version]
    return write_model(read_examples(logs, names), out_dir, names=names, **options)


def write_model(
    examples: Examples,
    out_dir: Path,
    *,
    name: str = "default",
    version: int = 1,
    l2: float = 1.0,
    family: str = "logistic",
    gbdt: GbdtParams | None = None,
    expires_at: datetime = DEFAULT_EXPIRES_AT,
    names: tuple[str, ...] = FEATURE_NAMES,
) -> TrainResult:
    """Fit on `examples`; write `model.onnx` and `manifest.json` into `out_dir`.

    `created_at` is the time of the newest example, so the same logs give byte-identical
    files.
    """
    model, spec, iterations = train_examples(examples, l2=l2, family=family, gbdt=gbdt, names=names)
    onnx_bytes = (
        gbdt_to_onnx(model, names) if isinstance(model, GbdtModel) else to_onnx(model, names)
    )
    manifest = make_manifest(
        onnx_bytes,
        spec,
        created_at=examples.latest_at,
        name=name,
        version=version,
        expires_at=expires_at,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, manifest_path = out_dir / MODEL_FILE, out_dir / MANIFEST_FILE
    model_path.write_bytes(onnx_bytes)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return TrainResult(
        model=model,
        spec=spec,
        manifest=manifest,
        model_path=model_path,
        manifest_path=manifest_path,
        examples=len(examples),
        iterations=iterations,
    )
