"""Build the shipped default model end to end from the synthetic world (seeded, reproducible).

`build_from_logs` trains and evaluates from JSON-lines logs exactly as from a real gateway
export. `build_default` first has the world's logs written by `simulators.world_logs` in a
child process (`python -m simulators.world_logs`): `models` never imports `simulators`, so
the training code cannot see the world's ground truth (a test holds it to that).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import ModelError
from models.evaluate import evaluate_examples
from models.features import FEATURE_SETS
from models.gbdt import GbdtParams
from models.layout import DEFAULT_DIR
from models.logs import read_examples
from models.train import TrainResult, write_model

TRAIN_LOGS = "train.jsonl"
HOLDOUT_LOGS = "holdout.jsonl"
HOLDOUT_PER_HOUSEHOLD = 60
"""Impressions logged per held-out household (about 24 per device): each device's are the
candidates the ranking metrics order."""


SPEC_VERSION = 2
"""The shipped default model's feature spec: v2, the household's features after v1's (an agent
with no household serves them at their spec defaults)."""


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
    """Logs of a world of `households` in `logs_dir` (train, holdout), written by
    `python -m simulators.world_logs` in a child process of this interpreter."""
    paths = (logs_dir / TRAIN_LOGS, logs_dir / HOLDOUT_LOGS)
    command = [
        sys.executable,
        "-m",
        "simulators.world_logs",
        "--train",
        str(paths[0]),
        "--holdout",
        str(paths[1]),
        "--seed",
        str(seed),
        "--households",
        str(households),
        "--per-household",
        str(per_household),
        "--holdout-share",
        repr(holdout),
    ]
    if holdout_per_household is not None:
        command += ["--holdout-per-household", str(holdout_per_household)]
    # the checkout this package came from first: its simulators, not another install's
    checkout = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": checkout + (os.pathsep + path if path else "")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"simulators.world_logs failed ({done.returncode}): {detail}")
    return paths


def build_from_logs(
    train_logs: Path,
    holdout_logs: Path,
    out: Path = DEFAULT_DIR,
    *,
    seed: int = 7,
    family: str = "gbdt",
    spec_version: int = SPEC_VERSION,
) -> BuildResult:
    """Logs -> `model.onnx`, `manifest.json`, `evaluation.json` in `out`."""
    names = FEATURE_SETS[spec_version]
    train_examples = read_examples(train_logs, names)
    trained = write_model(
        train_examples, out, family=family, gbdt=GbdtParams(seed=seed), names=names
    )
    holdout_examples = read_examples(holdout_logs, names)
    evaluation = evaluate_examples(out, train_examples, holdout_examples, seed=seed)
    return BuildResult(trained=trained, evaluation=evaluation)


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
    spec_version: int = SPEC_VERSION,
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
        return build_from_logs(
            train_logs, holdout_logs, out, seed=seed, family=family, spec_version=spec_version
        )
