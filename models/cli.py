"""Model verbs: `python -m models build-default`, or `edgemart model build-default` once wired.

`register(subparsers)` adds the `model` group to the `edgemart` CLI; `main` is the
stand-alone entry point. Each verb is a few lines over a library call:

    python -m models build-default [--seed 7] [--households 20000] [--out models/default]

builds the shipped default model from the seeded synthetic world (see
`models.build_default`, the only place `models` touches `simulators.world`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from models.build_default import DEFAULT_DIR, build_default
from models.errors import ModelError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `model <verb>` to a parent parser; verbs set `func(args) -> exit code`."""
    group = subparsers.add_parser("model", help="train, evaluate and export ranking models")
    _add_verbs(group.add_subparsers(dest="verb", required=True, metavar="verb"))


def _add_verbs(verbs: argparse._SubParsersAction[Any]) -> None:
    build = verbs.add_parser(
        "build-default",
        help="build models/default from the seeded synthetic world",
        description="Generate world logs, train, export ONNX + manifest, evaluate.",
    )
    build.add_argument("--seed", type=int, default=7, help="world and evaluation seed")
    build.add_argument("--households", type=int, default=20_000, help="households in the world")
    build.add_argument("--out", type=Path, default=DEFAULT_DIR, help="output folder")
    build.add_argument("--logs", type=Path, default=None, help="keep the generated logs here")
    build.set_defaults(func=_build_default)


def _build_default(args: argparse.Namespace) -> int:
    result = build_default(args.out, seed=args.seed, households=args.households, logs_dir=args.logs)
    metrics = result.evaluation["metrics"]
    print(f"wrote {result.trained.model_path} and {result.trained.manifest_path}")
    print(json.dumps({name: m["auc"] for name, m in metrics.items()}, indent=None))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description="Model verbs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    _add_verbs(parser.add_subparsers(dest="verb", required=True, metavar="verb"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        code: int = args.func(args)
    except (ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code
