"""The evaluation as people read it: a Markdown table and a calibration / gains plot (PNG)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ModelError
from models.logs import FloatArray

COLUMNS = (
    ("auc", "AUC"),
    ("log_loss", "log loss"),
    ("precision_at_3", "P@3"),
    ("precision_at_5", "P@5"),
    ("ndcg_at_3", "NDCG@3"),
    ("ndcg_at_5", "NDCG@5"),
)


def render_table(report: Mapping[str, Any]) -> str:
    """`evaluation.json` as a Markdown table, one row per scorer."""
    metrics: Mapping[str, Mapping[str, Any]] = report["metrics"]
    head = "| scorer | " + " | ".join(title for _, title in COLUMNS) + " | ECE | top-decile lift |"
    rule = "|" + " --- |" * (len(COLUMNS) + 3)
    lines = [
        f"# Evaluation of {report['model']['name']} v{report['model']['version']}",
        "",
        f"Held out: {report['holdout']['examples']} impressions, {report['holdout']['clicks']} "
        f"clicks, {report['holdout']['devices']} devices. {report.get('method', '')}.",
        "",
        head,
        rule,
    ]
    for name, m in metrics.items():
        cells = [f"{m[key]:.4f}" for key, _ in COLUMNS]
        cal = m["calibration"]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {cal['ece']:.4f} | {cal['top_bin_lift']:.2f} |"
        )
    ratios = report.get("vs_popularity", {})
    if ratios:
        lines += ["", "Model / popularity: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())]
    return "\n".join(lines) + "\n"


def write_plot(path: Path, clicked: FloatArray, scorers: Mapping[str, FloatArray]) -> None:
    """Calibration (model only) and cumulative gains (every scorer) side by side, as PNG."""
    try:
        import matplotlib as mpl  # noqa: PLC0415

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ModelError(
            "the evaluation plot needs matplotlib: pip install edgemart[train]"
        ) from exc
    fig, (cal_ax, gain_ax) = plt.subplots(1, 2, figsize=(10, 4.5), dpi=80)
    scores = scorers["model"]
    order = np.argsort(scores, kind="stable")
    parts = [p for p in np.array_split(order, 10) if p.shape[0]]
    predicted = [float(scores[p].mean()) for p in parts]
    observed = [float(clicked[p].mean()) for p in parts]
    top = max(*predicted, *observed) * 1.05
    cal_ax.plot([0, top], [0, top], color="grey", linestyle="--", label="perfect")
    cal_ax.plot(predicted, observed, marker="o", label="model (deciles)")
    cal_ax.set(xlabel="predicted click rate", ylabel="observed click rate", title="Calibration")
    cal_ax.legend(loc="upper left")
    total = max(float(clicked.sum()), 1.0)
    share = np.arange(1, clicked.shape[0] + 1) / clicked.shape[0]
    for name, values in scorers.items():
        ranked = clicked[np.argsort(-values, kind="stable")]
        gain_ax.plot(share, np.cumsum(ranked) / total, label=name)
    gain_ax.set(
        xlabel="share of impressions (by score)", ylabel="share of clicks", title="Cumulative gains"
    )
    gain_ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
