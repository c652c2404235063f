"""Reading logged examples (the gateway's export, JSON lines) into arrays for training.

One line per shown offer: `{"device_id", "profile", "offer_id", "campaign_id",
"features": {name: value}, "kind": "click"|"impression", "at"}`. Features are read in
order of the names asked for (`FEATURE_NAMES`, v1, unless told); extra names are ignored, a
missing one is an error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import LogFormatError
from models.features import FEATURE_NAMES
from protocol.ids import parse_time

FloatArray = npt.NDArray[np.float64]

LABELS = {"click": 1.0, "impression": 0.0}


@dataclass(frozen=True, slots=True, eq=False)
class Examples:
    """Raw (unscaled) features `[n, F]` in `FEATURE_NAMES` order, labels and keys."""

    features: FloatArray
    clicked: FloatArray  # 1.0 for a click, 0.0 for an impression without one
    offer_ids: tuple[str, ...]
    device_ids: tuple[str, ...]
    latest_at: datetime

    def __len__(self) -> int:
        return len(self.offer_ids)


def read_examples(path: Path, names: Sequence[str] = FEATURE_NAMES) -> Examples:
    """All logged examples in `path`, features `names` in that order; raises `LogFormatError`
    naming the first bad line."""
    rows: list[list[float]] = []
    labels: list[float] = []
    offers: list[str] = []
    devices: list[str] = []
    latest: datetime | None = None
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row, label, offer, device, at = _parse(json.loads(line), names)
                except (ValueError, KeyError, TypeError) as exc:
                    raise LogFormatError(_describe(exc), path=path, line=number) from exc
                rows.append(row)
                labels.append(label)
                offers.append(offer)
                devices.append(device)
                latest = at if latest is None or at > latest else latest
    except OSError as exc:
        raise LogFormatError(f"cannot read: {exc.strerror}", path=path) from exc
    if latest is None:
        raise LogFormatError("no logged examples", path=path)
    features = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(features).all():
        raise LogFormatError("a feature value is not a finite number", path=path)
    return Examples(
        features=features,
        clicked=np.asarray(labels, dtype=np.float64),
        offer_ids=tuple(offers),
        device_ids=tuple(devices),
        latest_at=latest,
    )


def _parse(obj: Any, names: Sequence[str]) -> tuple[list[float], float, str, str, datetime]:
    if not isinstance(obj, dict):
        raise TypeError("a line must be a JSON object")
    features = obj["features"]
    if not isinstance(features, dict):
        raise TypeError("features must be an object")
    row = [_number(name, features[name]) for name in names]
    kind = obj["kind"]
    if kind not in LABELS:
        raise ValueError(f"kind must be click or impression, not {kind!r}")
    offer, device, at = obj["offer_id"], obj["device_id"], obj["at"]
    if not (isinstance(offer, str) and isinstance(device, str) and isinstance(at, str)):
        raise TypeError("offer_id, device_id and at must be strings")
    return row, LABELS[kind], offer, device, parse_time(at)


def _number(name: str, value: Any) -> float:
    if not isinstance(value, int | float):  # bools count as 0/1
        raise TypeError(f"feature {name} must be a number")
    return float(value)


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]}"
    return str(exc)
