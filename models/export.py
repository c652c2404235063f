"""Export training logs from a gateway store: outcomes with the features devices logged.

Reads `DATA_DIR/gateway.db` read-only with plain SQLite (no `cloud_gateway` import: the
file format is the contract). Every impression that carries logged features becomes one
line of the JSON-lines format `models.logs` reads; it is a click when the same device
clicked the same offer after that impression and before its next one. A holdout device's
counterfactual impression (logged, never shown: no click could follow) is skipped, not
counted as a negative. Devices log the
*scaled* inputs of the model version they ran; they are unscaled with that version's
spec (from the gateway's model registry, or `fallback` manifests such as the shipped
default) and keyed by feature name.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import ModelError
from models.features import FEATURE_NAMES, FEATURE_NAMES_V2
from protocol.envelopes import FeatureSpec, ModelManifest

DB_FILE = "gateway.db"


@dataclass(slots=True)
class ExportStats:
    written: int = 0
    clicks: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _connect(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / DB_FILE
    if not path.is_file():
        raise ModelError(f"{path}: no gateway database here")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        conn.execute("SELECT 1 FROM outcome_features LIMIT 1")
    except sqlite3.Error as exc:
        raise ModelError(f"{path}: not a gateway database with logged features: {exc}") from exc
    conn.row_factory = sqlite3.Row
    return conn


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """A store from before a migration lacks the column (the export reads it read-only)."""
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


def _specs(conn: sqlite3.Connection, fallback: Mapping[int, FeatureSpec]) -> dict[int, FeatureSpec]:
    specs = dict(fallback)
    for row in conn.execute("SELECT version, manifest FROM models"):
        manifest = ModelManifest.model_validate(json.loads(row["manifest"]))
        specs[int(row["version"])] = manifest.feature_spec
    return specs


def unscale(values: list[float], spec: FeatureSpec) -> dict[str, float] | None:
    """Raw feature values by name from a device's scaled inputs; None when they don't fit."""
    if len(values) != len(spec.features):
        return None
    raw = {f.name: v * f.scale + f.mean for f, v in zip(spec.features, values, strict=True)}
    if any(name not in raw for name in FEATURE_NAMES):
        return None
    # the household features too when the device's model had them (spec v2): a model of
    # that spec can then be trained and evaluated on the export
    names = FEATURE_NAMES_V2 if all(name in raw for name in FEATURE_NAMES_V2) else FEATURE_NAMES
    return {name: round(raw[name], 6) for name in names}


def iter_examples(
    data_dir: Path, stats: ExportStats, fallback: Mapping[int, FeatureSpec] | None = None
) -> Iterator[dict[str, Any]]:
    """Logged examples in the store, oldest first per device and offer."""
    conn = _connect(data_dir)
    try:
        specs = _specs(conn, fallback or {})
        counterfactual = (
            "o.counterfactual" if _has_column(conn, "outcomes", "counterfactual") else "0"
        )
        rows = conn.execute(  # {counterfactual} is one of two constants, not input
            "SELECT o.device_id, o.id, o.offer_id, o.campaign_id, o.kind, o.at, o.model_version,"  # noqa: S608
            f" {counterfactual} AS counterfactual,"
            " f.features, d.profile FROM outcomes o"
            " LEFT JOIN outcome_features f ON f.device_id = o.device_id AND f.id = o.id"
            " LEFT JOIN devices d ON d.device_id = o.device_id"
            " WHERE o.kind IN ('impression', 'click') ORDER BY o.device_id, o.offer_id, o.at"
        )
        pending: dict[str, Any] | None = None
        for row in rows:
            key = (row["device_id"], row["offer_id"])
            if pending is not None and (pending["device_id"], pending["offer_id"]) != key:
                yield pending
                pending = None
            if row["kind"] == "click":
                if pending is not None and pending["kind"] == "impression":
                    pending["kind"] = "click"
                    stats.clicks += 1
                continue
            if pending is not None:
                yield pending
                pending = None
            if row["counterfactual"]:
                stats.skip("counterfactual")
                continue
            example = _example(row, specs, stats)
            if example is not None:
                stats.written += 1
                pending = example
        if pending is not None:
            yield pending
    finally:
        conn.close()


def _example(
    row: sqlite3.Row, specs: Mapping[int, FeatureSpec], stats: ExportStats
) -> dict[str, Any] | None:
    if row["features"] is None:
        stats.skip("no_features")
        return None
    spec = specs.get(row["model_version"]) if row["model_version"] is not None else None
    if spec is None:
        stats.skip("unknown_model_version")
        return None
    features = unscale(json.loads(row["features"]), spec)
    if features is None:
        stats.skip("spec_mismatch")
        return None
    return {
        "device_id": row["device_id"],
        "profile": row["profile"] or "unknown",
        "offer_id": row["offer_id"],
        "campaign_id": row["campaign_id"],
        "features": features,
        "kind": "impression",
        "at": row["at"],
    }


def shipped_specs() -> dict[int, FeatureSpec]:
    """The spec of the shipped default model, by version (devices run it before any rollout)."""
    path = Path(__file__).resolve().parent / "default" / "manifest.json"
    try:
        manifest = ModelManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}
    return {manifest.version: manifest.feature_spec}


def export_logs(
    data_dir: Path, out: Path, fallback: Mapping[int, FeatureSpec] | None = None
) -> ExportStats:
    """Write the store's logged examples to `out` (JSON lines); returns what was written."""
    stats = ExportStats()
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for example in iter_examples(data_dir, stats, fallback):
            fh.write(json.dumps(example, separators=(",", ":")) + "\n")
    tmp.replace(out)
    return stats
