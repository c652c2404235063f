"""Ranking and calibration metrics over logged examples (pure numpy, no I/O).

Ranking metrics group the held-out impressions by device: each device's logged impressions
are the candidates, a scorer orders them, and `precision_at_k` / `ndcg_at_k` ask how many
of the top k were clicked. The logs come from a uniform exploration policy, so every
candidate had the same chance to be shown: the comparison between scorers is fair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.logs import FloatArray


def _groups(keys: Sequence[str]) -> list[np.ndarray]:
    """Row indices per distinct key, in first-seen order."""
    index: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        index.setdefault(key, []).append(i)
    return [np.asarray(rows, dtype=np.intp) for rows in index.values()]


def _top(rows: np.ndarray, scores: FloatArray, k: int) -> np.ndarray:
    """The `k` rows with the highest score (ties keep log order)."""
    order = np.argsort(-scores[rows], kind="stable")
    return rows[order[:k]]


def precision_at_k(
    keys: Sequence[str], clicked: FloatArray, scores: FloatArray, k: int
) -> tuple[float, int]:
    """Mean share of clicks among each group's top `k`; groups with fewer than k rows are
    skipped. Returns `(precision, groups used)`."""
    values = [
        float(clicked[_top(rows, scores, k)].mean()) for rows in _groups(keys) if len(rows) >= k
    ]
    return (float(np.mean(values)) if values else float("nan")), len(values)


def ndcg_at_k(
    keys: Sequence[str], clicked: FloatArray, scores: FloatArray, k: int
) -> tuple[float, int]:
    """Mean NDCG@k (binary gains, log2 discount) over groups with at least one click."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for rows in _groups(keys):
        labels = clicked[rows]
        positives = int(labels.sum())
        if positives == 0:
            continue
        gains = clicked[_top(rows, scores, k)]
        ideal = float(discount[: min(positives, k)].sum())
        values.append(float((gains * discount[: gains.shape[0]]).sum()) / ideal)
    return (float(np.mean(values)) if values else float("nan")), len(values)


def calibration(clicked: FloatArray, scores: FloatArray, bins: int = 10) -> dict[str, Any]:
    """Equal-count bins of predicted score: mean prediction vs observed click rate per bin,
    the expected calibration error, and the lift of the top bin over the overall rate."""
    order = np.argsort(scores, kind="stable")
    parts = [p for p in np.array_split(order, bins) if p.shape[0] > 0]
    overall = float(clicked.mean())
    table = [
        {
            "predicted": round(float(scores[p].mean()), 6),
            "observed": round(float(clicked[p].mean()), 6),
            "count": int(p.shape[0]),
        }
        for p in parts
    ]
    n = float(clicked.shape[0])
    ece = sum(row["count"] / n * abs(row["predicted"] - row["observed"]) for row in table)
    top = float(clicked[parts[-1]].mean())
    return {
        "bins": table,
        "ece": round(float(ece), 6),
        "top_bin_lift": round(top / overall, 6) if overall > 0 else float("nan"),
    }
