"""Offline evaluation: AUC and log loss of a model file against simple baselines.

The model is scored as shipped (its `manifest.json` scaling, its `model.onnx` through
onnxruntime) on held-out households' logs. Baselines: per-offer popularity (click rate
in the training logs, smoothed towards the overall rate), a constant (the overall rate)
and seeded uniform random scores. `evaluate` writes `evaluation.json` beside the model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from models.errors import ModelError
from models.logs import Examples, FloatArray, read_examples
from models.train import MANIFEST_FILE, MODEL_FILE, scale_features
from protocol.envelopes import FeatureSpec, ModelManifest

EVALUATION_FILE = "evaluation.json"
POPULARITY_PRIOR = 20.0
"""Pseudo-impressions at the overall click rate added to each offer's counts."""


def auc(clicked: FloatArray, scores: FloatArray) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores share their average rank)."""
    positives = int(clicked.sum())
    negatives = clicked.shape[0] - positives
    if positives == 0 or negatives == 0:
        raise ModelError("AUC needs both clicks and non-clicks")
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(scores.shape[0])
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    u = ranks[clicked == 1.0].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def log_loss(clicked: FloatArray, scores: FloatArray, eps: float = 1e-7) -> float:
    p = np.clip(scores, eps, 1.0 - eps)
    return float(-np.mean(clicked * np.log(p) + (1.0 - clicked) * np.log1p(-p)))


def popularity_scores(train: Examples, offer_ids: tuple[str, ...]) -> FloatArray:
    """Each offer's smoothed click rate in `train`; unseen offers get the overall rate."""
    overall = float(train.clicked.mean())
    shows: defaultdict[str, float] = defaultdict(float)
    clicks: defaultdict[str, float] = defaultdict(float)
    for offer, label in zip(train.offer_ids, train.clicked.tolist(), strict=True):
        shows[offer] += 1.0
        clicks[offer] += label
    prior = POPULARITY_PRIOR
    return np.array(
        [(clicks[o] + prior * overall) / (shows[o] + prior) for o in offer_ids], dtype=np.float64
    )


def model_scores(model_dir: Path, examples: Examples) -> tuple[FloatArray, ModelManifest]:
    """Scores of the shipped model (manifest scaling + ONNX through onnxruntime)."""
    manifest = ModelManifest.model_validate(
        json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    )
    spec: FeatureSpec = manifest.feature_spec
    session = onnxruntime.InferenceSession(
        str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    scaled = scale_features(examples.features, spec).astype(np.float32)
    (out,) = session.run([spec.output_name], {spec.input_name: scaled})
    return np.asarray(out, dtype=np.float64).reshape(-1), manifest


def _metrics(clicked: FloatArray, scores: FloatArray) -> dict[str, float]:
    return {"auc": round(auc(clicked, scores), 6), "log_loss": round(log_loss(clicked, scores), 6)}


def evaluate(model_dir: Path, train_logs: Path, holdout_logs: Path, *, seed: int) -> dict[str, Any]:
    """Compare the model in `model_dir` with the baselines on `holdout_logs`; write the report."""
    return evaluate_examples(
        model_dir, read_examples(train_logs), read_examples(holdout_logs), seed=seed
    )


def evaluate_examples(
    model_dir: Path, train: Examples, holdout: Examples, *, seed: int
) -> dict[str, Any]:
    """`evaluate` on examples already read; `train` feeds the popularity baseline."""
    scores, manifest = model_scores(model_dir, holdout)
    y = holdout.clicked
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {
        "model": {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256},
        "train": {"examples": len(train), "clicks": int(train.clicked.sum())},
        "holdout": {
            "examples": len(holdout),
            "clicks": int(y.sum()),
            "devices": len(set(holdout.device_ids)),
        },
        "metrics": {
            "model": _metrics(y, scores),
            "popularity": _metrics(y, popularity_scores(train, holdout.offer_ids)),
            "constant": _metrics(y, np.full(len(holdout), float(train.clicked.mean()))),
            "random": _metrics(y, rng.random(len(holdout))),
        },
    }
    (model_dir / EVALUATION_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
