"""`edgemart model retrain`: export a gateway's logs, train a candidate, evaluate it against
the current model on the same held-out devices, and publish it as a candidate (registered,
not rolled out), refusing one whose offline evaluation is worse.

The current model is the newest the gateway runs at 100 % of some profile without a halt
(else the newest with any rollout), fetched from the gateway; with none, the shipped default.
The held-out devices are a stable hash share of the exported devices (`holdout_share`), so
both models are scored on the same impressions, with the current model's features (the
candidate is trained with the same feature set). The comparison is the AUC of each model on
the held-out impressions; a candidate below the current model by more than `tolerance` is
refused (`CandidateRefused`, a `ModelError`: the CLI prints one line and exits 1).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from models.errors import ModelError
from models.export import export_logs, shipped_specs
from models.features import FEATURE_SETS
from models.layout import DEFAULT_DIR, MANIFEST_FILE, MODEL_FILE
from models.publish import TIMEOUT_S, prepare_manifest, upload
from protocol.assign import bucket
from protocol.envelopes import ModelManifest

log = logging.getLogger(__name__)

HOLDOUT_SALT = "retrain-holdout"


class CandidateRefused(ModelError):
    """The candidate's offline evaluation is worse than the current model's."""

    def __init__(self, candidate: float, current: float, current_version: int, n: int) -> None:
        super().__init__(
            f"candidate refused: held-out AUC {candidate:.4f} is below the current model "
            f"v{current_version}'s {current:.4f} on the same {n} held-out impressions"
        )
        self.candidate = candidate
        self.current = current


@dataclass(frozen=True, slots=True)
class Comparison:
    version: int
    """The candidate's version (registered when not refused)."""
    current_version: int
    candidate_auc: float
    current_auc: float
    holdout: int
    train: int
    dropped: int
    """Exported lines without the current model's features (a device on an older spec)."""


def split_logs(
    logs: Path, names: tuple[str, ...], train: Path, holdout: Path, share: float
) -> tuple[int, int, int]:
    """Split exported lines by device (stable hash) into train and held-out files, keeping
    the lines that carry every feature in `names`; (train, held out, dropped) counts."""
    counts = [0, 0, 0]
    with (
        logs.open(encoding="utf-8") as src,
        train.open("w", encoding="utf-8") as fit,
        holdout.open("w", encoding="utf-8") as held,
    ):
        for line in src:
            try:
                doc = json.loads(line)
                features = doc["features"]
                device = str(doc["device_id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelError(f"{logs}: not an exported line: {exc}") from exc
            if not isinstance(features, dict) or any(n not in features for n in names):
                counts[2] += 1
                continue
            held_out = bucket(device, HOLDOUT_SALT) < share
            (held if held_out else fit).write(line)
            counts[1 if held_out else 0] += 1
    return counts[0], counts[1], counts[2]


def compare(
    candidate_dir: Path, current_dir: Path, holdout: Path, names: tuple[str, ...]
) -> tuple[float, float, int]:
    """Both models' AUC on the same held-out impressions, and how many there were."""
    from models.evaluate import auc, model_scores  # noqa: PLC0415 - the train extra
    from models.logs import read_examples  # noqa: PLC0415

    examples = read_examples(holdout, names)
    candidate, _ = model_scores(candidate_dir, examples)
    current, _ = model_scores(current_dir, examples)
    return auc(examples.clicked, candidate), auc(examples.clicked, current), len(examples)


def current_of(models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The model the fleet runs now, from `GET /v1/models`'s list."""
    live = [m for m in models if m.get("halt") is None and m.get("rollouts")]
    full = [m for m in live if any(r["percent"] == 100 for r in m["rollouts"].values())]
    pick = full or live
    return max(pick, key=lambda m: int(m["version"])) if pick else None


async def fetch_models(gateway: str, token: str) -> list[dict[str, Any]]:
    async with _session(gateway, token) as http, http.get("/v1/models") as resp:
        if resp.status != 200:
            raise ModelError(f"gateway answered {resp.status} to GET /v1/models")
        models: list[dict[str, Any]] = (await resp.json())["models"]
        return models


async def fetch_current(gateway: str, token: str, into: Path) -> tuple[int, Path, int]:
    """(current version, its folder, the latest registered version): the current model's
    file and manifest written into `into`, or the shipped default's folder."""
    models = await fetch_models(gateway, token)
    latest = max((int(m["version"]) for m in models), default=0)
    current = current_of(models)
    if current is None:
        shipped = await asyncio.to_thread(_manifest_of, DEFAULT_DIR)
        return shipped.version, DEFAULT_DIR, max(latest, shipped.version)
    version = int(current["version"])
    async with (
        _session(gateway, token) as http,
        http.get(f"/v1/models/{version}/model.onnx") as resp,
    ):
        if resp.status != 200:
            raise ModelError(f"gateway answered {resp.status} for model v{version}'s file")
        data = await resp.read()
    await asyncio.to_thread(_write_model_dir, into, data, current["manifest"])
    return version, into, latest


def _write_model_dir(into: Path, data: bytes, manifest: dict[str, Any]) -> None:
    into.mkdir(parents=True, exist_ok=True)
    (into / MODEL_FILE).write_bytes(data)
    (into / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")


def _session(gateway: str, token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        gateway.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
    )


def _manifest_of(model_dir: Path) -> ModelManifest:
    return ModelManifest.model_validate_json(
        (model_dir / MANIFEST_FILE).read_text(encoding="utf-8")
    )


def _names_of(model_dir: Path) -> tuple[str, ...]:
    manifest = _manifest_of(model_dir)
    names = tuple(manifest.feature_spec.names)
    if names not in FEATURE_SETS.values():
        raise ModelError(f"{model_dir}: the current model's features are no known feature set")
    return names


async def retrain(
    gateway: str,
    token: str,
    data_dir: Path,
    work_dir: Path,
    *,
    version: int | None = None,
    family: str = "gbdt",
    seed: int = 7,
    holdout_share: float = 0.2,
    tolerance: float = 0.0,
) -> tuple[Comparison, dict[str, Any]]:
    """Export -> train -> evaluate -> publish as a candidate; CandidateRefused when the
    candidate's held-out AUC is below the current model's by more than `tolerance`."""
    from models.gbdt import GbdtParams  # noqa: PLC0415 - the train extra
    from models.logs import read_examples  # noqa: PLC0415
    from models.train import write_model  # noqa: PLC0415

    if not 0 < holdout_share < 1:
        raise ModelError(f"holdout share {holdout_share}: must lie in (0, 1)")
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    logs, train, holdout = (work_dir / n for n in ("logs.jsonl", "train.jsonl", "holdout.jsonl"))
    try:
        stats = await asyncio.to_thread(export_logs, data_dir, logs, shipped_specs())
        current_version, current_dir, latest = await fetch_current(
            gateway, token, work_dir / "current"
        )
    except aiohttp.ClientError as exc:
        raise ModelError(f"cannot reach the gateway at {gateway}: {exc}") from exc
    names = await asyncio.to_thread(_names_of, current_dir)
    n_train, n_holdout, dropped = await asyncio.to_thread(
        split_logs, logs, names, train, holdout, holdout_share
    )
    if n_train == 0 or n_holdout == 0:
        raise ModelError(
            f"{stats.written} exported impressions: {n_train} to train on, {n_holdout} held "
            f"out ({dropped} without the current model's features); need both"
        )
    version = version if version is not None else latest + 1
    candidate_dir = work_dir / "candidate"
    examples = await asyncio.to_thread(read_examples, train, names)
    await asyncio.to_thread(
        write_model,
        examples,
        candidate_dir,
        version=version,
        family=family,
        gbdt=GbdtParams(seed=seed),
        names=names,
    )
    cand_auc, cur_auc, n = await asyncio.to_thread(
        compare, candidate_dir, current_dir, holdout, names
    )
    result = Comparison(version, current_version, cand_auc, cur_auc, n, n_train, dropped)
    if cand_auc < cur_auc - tolerance:
        raise CandidateRefused(cand_auc, cur_auc, current_version, n)
    manifest, data = await asyncio.to_thread(prepare_manifest, candidate_dir, version=version)
    try:
        registered = await upload(gateway, token, manifest, data)
    except aiohttp.ClientError as exc:
        raise ModelError(f"cannot reach the gateway at {gateway}: {exc}") from exc
    log.info(
        "candidate v%d registered: AUC %.4f vs v%d %.4f",
        version,
        cand_auc,
        current_version,
        cur_auc,
    )
    return result, registered
