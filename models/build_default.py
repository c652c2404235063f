"""Build the shipped default model end to end from the synthetic world (seeded, reproducible).

This is glue, and the only module of `models` that imports `simulators.world`: it writes
the world's logged examples to JSON lines, then trains and evaluates from those files
exactly as from a real gateway export. The training library never sees the world.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.evaluate import evaluate_examples
from models.gbdt import GbdtParams
from models.layout import DEFAULT_DIR
from models.logs import read_examples
from models.train import TrainResult, write_model
from simulators.world import logged_examples, make_world, to_jsonl

TRAIN_LOGS = "train.jsonl"
HOLDOUT_LOGS = "holdout.jsonl"
HOLDOUT_PER_HOUSEHOLD = 60
"""Impressions logged per held-out household (about 24 per device): each device's are the
candidates the ranking metrics order."""


@dataclass(frozen=True, slots=True, eq=False)
class BuildResult:
    trained: TrainResult
    evaluation: dict[str, Any]


def write_world_logs(
    logs_dir: Path,
    *,
    seed: int,
    households: int,
    per_household: int,
    holdout: float,
    holdout_per_household: int | None = None,
) -> tuple[Path, Path]:
    """Logs of a world of `households`: the last `holdout` share of households held out
    (with `holdout_per_household` impressions each: candidates for the ranking metrics)."""
    world = make_world(seed, households)
    split = max(1, min(households - 1, round(households * (1.0 - holdout))))
    logs_dir.mkdir(parents=True, exist_ok=True)
    paths = (logs_dir / TRAIN_LOGS, logs_dir / HOLDOUT_LOGS)
    shown = (per_household, holdout_per_household or per_household)
    for stream, (path, ids, n) in enumerate(
        zip(paths, (range(split), range(split, households)), shown, strict=True)
    ):
        with path.open("w", encoding="utf-8") as out:
            out.writelines(to_jsonl(logged_examples(world, ids, n, stream)))
    return paths


def build_default(
    out: Path = DEFAULT_DIR,
    *,
    seed: int = 7,
    households: int = 20_000,
    per_household: int = 5,
    holdout: float = 0.2,
    holdout_per_household: int = HOLDOUT_PER_HOUSEHOLD,
    family: str = "gbdt",
    logs_dir: Path | None = None,
) -> BuildResult:
    """World logs -> `model.onnx`, `manifest.json`, `evaluation.json` in `out`.

    The logs go to a temporary folder unless `logs_dir` keeps them.
    """
    if households < 2:
        raise ValueError("need at least two households: one to train on, one held out")
    with tempfile.TemporaryDirectory(prefix="edgemart-logs-") as scratch:
        folder = logs_dir if logs_dir is not None else Path(scratch)
        train_logs, holdout_logs = write_world_logs(
            folder,
            seed=seed,
            households=households,
            per_household=per_household,
            holdout=holdout,
            holdout_per_household=holdout_per_household,
        )
        train_examples = read_examples(train_logs)
        trained = write_model(train_examples, out, family=family, gbdt=GbdtParams(seed=seed))
        evaluation = evaluate_examples(out, train_examples, read_examples(holdout_logs), seed=seed)
    return BuildResult(trained=trained, evaluation=evaluation)
