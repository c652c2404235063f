"""Offline evaluation of a model file against simple baselines on held-out households.

The model is scored as shipped (its `manifest.json` scaling, its `model.onnx` through
onnxruntime) on held-out households' logs. Baselines: per-offer popularity (click rate
in the training logs, smoothed towards the overall rate), a constant (the overall rate)
and seeded uniform random scores. Each scorer gets AUC, log loss, calibration (equal-count
bins, ECE, top-bin lift), precision@k and NDCG@k (per device, see `models.metrics`).
`evaluate` writes `evaluation.json`, `evaluation.md` (a table) and `evaluation.png`
(calibration and cumulative-gains plot) beside the model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from models.errors import ModelError
from models.layout import EVALUATION_FILE, MANIFEST_FILE, MODEL_FILE, PLOT_FILE, TABLE_FILE
from models.logs import Examples, FloatArray, read_examples
from models.metrics import calibration, ndcg_at_k, precision_at_k
from models.report import render_table, write_plot
from models.train import scale_features
from protocol.envelopes import FeatureSpec, ModelManifest

RANK_KS = (3, 5)
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


def _manifest(model_dir: Path) -> ModelManifest:
    return ModelManifest.model_validate(
        json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    )


def model_scores(model_dir: Path, examples: Examples) -> tuple[FloatArray, ModelManifest]:
    """Scores of the shipped model (manifest scaling + ONNX through onnxruntime)."""
    manifest = _manifest(model_dir)
    spec: FeatureSpec = manifest.feature_spec
    session = onnxruntime.InferenceSession(
        str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    scaled = scale_features(examples.features, spec).astype(np.float32)
    (out,) = session.run([spec.output_name], {spec.input_name: scaled})
    return np.asarray(out, dtype=np.float64).reshape(-1), manifest


def _metrics(keys: tuple[str, ...], clicked: FloatArray, scores: FloatArray) -> dict[str, Any]:
    out: dict[str, Any] = {
        "auc": round(auc(clicked, scores), 6),
        "log_loss": round(log_loss(clicked, scores), 6),
    }
    for k in RANK_KS:
        out[f"precision_at_{k}"] = round(precision_at_k(keys, clicked, scores, k)[0], 6)
        out[f"ndcg_at_{k}"] = round(ndcg_at_k(keys, clicked, scores, k)[0], 6)
    out["calibration"] = calibration(clicked, scores)
    return out


def evaluate(model_dir: Path, train_logs: Path, holdout_logs: Path, *, seed: int) -> dict[str, Any]:
    """Compare the model in `model_dir` with the baselines on `holdout_logs`; write the report."""
    names = tuple(_manifest(model_dir).feature_spec.names)
    return evaluate_examples(
        model_dir, read_examples(train_logs, names), read_examples(holdout_logs, names), seed=seed
    )


def evaluate_examples(
    model_dir: Path, train: Examples, holdout: Examples, *, seed: int
) -> dict[str, Any]:
    """`evaluate` on examples already read; `train` feeds the popularity baseline."""
    scores, manifest = model_scores(model_dir, holdout)
    y = holdout.clicked
    keys = holdout.device_ids
    rng = np.random.default_rng(seed)
    scorers = {
        "model": scores,
        "popularity": popularity_scores(train, holdout.offer_ids),
        "constant": np.full(len(holdout), float(train.clicked.mean())),
        "random": rng.random(len(holdout)),
    }
    metrics = {name: _metrics(keys, y, s) for name, s in scorers.items()}
    model_m, popular = metrics["model"], metrics["popularity"]
    report: dict[str, Any] = {
        "model": {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256},
        "train": {"examples": len(train), "clicks": int(train.clicked.sum())},
        "holdout": {
            "examples": len(holdout),
            "clicks": int(y.sum()),
            "devices": len(set(holdout.device_ids)),
            "ranking_groups": precision_at_k(keys, y, scores, RANK_KS[0])[1],
        },
        "metrics": metrics,
        "vs_popularity": {
            name: round(model_m[name] / popular[name], 6) if popular[name] else None
            for name in ("auc", *(f"precision_at_{k}" for k in RANK_KS))
        },
        "method": (
            "held-out households only; precision@k and NDCG@k rank each held-out device's "
            "logged impressions (uniform exploration) and count clicks in the top k"
        ),
    }
    (model_dir / EVALUATION_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (model_dir / TABLE_FILE).write_text(render_table(report), encoding="utf-8")
    write_plot(model_dir / PLOT_FILE, y, scorers)
    return report
