"""File names and folders of a model directory, importable without the training libraries."""

from __future__ import annotations

from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
EVALUATION_FILE = "evaluation.json"
TABLE_FILE = "evaluation.md"
PLOT_FILE = "evaluation.png"
FAMILIES = ("gbdt", "logistic")
