"""Write the synthetic world's logged examples as JSON lines, in the gateway's export format.

The glue between the world and training: `python -m models build-default` runs this module
in a child process (`python -m simulators.world_logs ...`) and trains on the files it writes,
exactly as on a real gateway export, so `models` never imports the world (or its ground truth).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulators.world import logged_examples, make_world, to_jsonl


def write_world_logs(
    train_path: Path,
    holdout_path: Path,
    *,
    seed: int,
    households: int,
    per_household: int,
    holdout: float,
    holdout_per_household: int | None = None,
) -> None:
    """Logs of a world of `households`: the last `holdout` share of households held out
    (with `holdout_per_household` impressions each: candidates for the ranking metrics)."""
    if households < 2:
        raise ValueError("need at least two households: one to train on, one held out")
    world = make_world(seed, households)
    split = max(1, min(households - 1, round(households * (1.0 - holdout))))
    shown = (per_household, holdout_per_household or per_household)
    paths = (train_path, holdout_path)
    for stream, (path, ids, n) in enumerate(
        zip(paths, (range(split), range(split, households)), shown, strict=True)
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            out.writelines(to_jsonl(logged_examples(world, ids, n, stream)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.world_logs", description="Write a seeded world's logs."
    )
    parser.add_argument("--train", type=Path, required=True, help="JSON lines to train on")
    parser.add_argument("--holdout", type=Path, required=True, help="held-out JSON lines")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--households", type=int, default=20_000)
    parser.add_argument("--per-household", type=int, default=5)
    parser.add_argument("--holdout-share", type=float, default=0.2)
    parser.add_argument("--holdout-per-household", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        write_world_logs(
            args.train,
            args.holdout,
            seed=args.seed,
            households=args.households,
            per_household=args.per_household,
            holdout=args.holdout_share,
            holdout_per_household=args.holdout_per_household,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
