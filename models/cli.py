"""Model verbs: `python -m models build-default`, or `edgemart model build-default` once wired.

`register(subparsers)` adds the `model` group to the `edgemart` CLI; `main` is the
stand-alone entry point. Each verb is a few lines over a library call:

    python -m models build-default [--seed 7] [--households 20000] [--out models/default]

builds the shipped default model from the seeded synthetic world (see
`models.build_default`: the world's logs come from `python -m simulators.world_logs` in a
child process; `models` never imports `simulators`). Then:

    edgemart model export --data-dir GW_DIR --out logs.jsonl     # a gateway's logged features
    edgemart model train logs.jsonl --holdout holdout.jsonl --out DIR
    edgemart model publish --gateway URL --dir DIR --version 2 [--rollout 10 --cohort all]
    edgemart model rollout --gateway URL --version 2 --percent 50 [--cohort profile:tv]
    edgemart model retrain --gateway URL --data-dir GW_DIR [--work DIR] [--version 3]

`retrain` chains export -> train -> evaluate against the current model on the same held-out
devices -> publish as a candidate (not rolled out: start an experiment with
`POST /v1/models/{version}/experiment`); a candidate worse offline is refused (exit 1).

`publish`, `rollout` and `retrain` read the operator token from `--token-file` or `EDGEMART_TOKEN`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from models.errors import ModelError
from models.layout import DEFAULT_DIR, FAMILIES, TABLE_FILE

# Training needs the `train` extra (onnx, scikit-learn, matplotlib): those verbs import it
# when they run, so `edgemart` works on a device or gateway installed without it, and says
# which extra to install when it is missing (`_guard`). Export (pydantic) and publish
# (aiohttp) are imported when they run too: `edgemart --help` stays light.

TRAIN_EXTRA = frozenset({"onnx", "sklearn", "matplotlib", "scipy"})
"""Top-level modules of the `train` extra."""


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
    build.add_argument(
        "--spec-version", type=int, choices=(1, 2), default=2, help="feature spec (2: household)"
    )
    build.set_defaults(func=_guard(_build_default))

    export = verbs.add_parser("export", help="export training logs from a gateway store")
    export.add_argument("--data-dir", type=Path, required=True, help="the gateway's DATA_DIR")
    export.add_argument("--out", type=Path, required=True, help="JSON-lines file to write")
    export.set_defaults(func=_guard(_export))

    train = verbs.add_parser("train", help="train (and evaluate) a model on exported logs")
    train.add_argument("logs", type=Path, help="training logs (JSON lines)")
    train.add_argument("--holdout", type=Path, default=None, help="held-out logs to evaluate on")
    train.add_argument("--out", type=Path, required=True, help="output folder")
    train.add_argument("--family", choices=FAMILIES, default="gbdt", help="model family")
    train.add_argument("--seed", type=int, default=7, help="training and evaluation seed")
    train.add_argument(
        "--spec-version", type=int, choices=(1, 2), default=1, help="feature spec (2: household)"
    )
    train.set_defaults(func=_guard(_train))

    publish = verbs.add_parser("publish", help="upload a model to a gateway, optionally roll out")
    _gateway_args(publish)
    publish.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="model folder")
    publish.add_argument("--version", type=int, required=True, help="above every earlier one")
    publish.add_argument("--profiles", default="", help="comma-separated; default: the manifest's")
    publish.add_argument("--expires-days", type=float, default=90.0, help="manifest lifetime")
    publish.add_argument("--rollout", type=int, default=None, help="percent of devices, 0..100")
    publish.add_argument("--cohort", default="all", help="'all' or 'profile:<name>'")
    publish.set_defaults(func=_guard(_publish))

    roll = verbs.add_parser("rollout", help="set a registered model's cohort and percentage")
    _gateway_args(roll)
    roll.add_argument("--version", type=int, required=True)
    roll.add_argument("--percent", type=int, required=True, help="0..100")
    roll.add_argument("--cohort", default="all", help="'all' or 'profile:<name>'")
    roll.set_defaults(func=_guard(_rollout))

    retrain = verbs.add_parser(
        "retrain",
        help="export, train, evaluate against the current model, publish as a candidate",
        description="Refuses (exit 1) a candidate whose held-out AUC is below the current's.",
    )
    _gateway_args(retrain)
    retrain.add_argument("--data-dir", type=Path, required=True, help="the gateway's DATA_DIR")
    retrain.add_argument("--work", type=Path, default=Path("retrain"), help="working folder")
    retrain.add_argument("--version", type=int, default=None, help="default: latest + 1")
    retrain.add_argument("--family", choices=FAMILIES, default="gbdt", help="model family")
    retrain.add_argument("--seed", type=int, default=7, help="training seed")
    retrain.add_argument("--holdout-share", type=float, default=0.2, help="devices held out")
    retrain.add_argument(
        "--tolerance", type=float, default=0.0, help="AUC the candidate may lose, 0 by default"
    )
    retrain.set_defaults(func=_guard(_retrain))


def _guard(verb: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Library errors become one line on stderr and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return verb(args)
        except (ModelError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
                raise
            print(f"error: {missing_train_extra(exc)}", file=sys.stderr)
            return 1

    return run


def missing_train_extra(exc: ModuleNotFoundError) -> str:
    """What to do when a training verb runs without the `train` extra."""
    return (
        f"this verb needs the train extra (no module {exc.name!r}): install it with"
        " pip install 'edgemart[train]', or pip install -e '.[train]' in a clone"
    )


def _gateway_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", required=True, help="gateway base URL, http://host:port")
    parser.add_argument("--token-file", type=Path, default=None, help="operator bearer token")


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        try:
            return str(args.token_file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ModelError(f"{args.token_file}: cannot read the token: {exc}") from exc
    token = os.environ.get("EDGEMART_TOKEN", "").strip()
    if not token:
        raise ModelError("no operator token: pass --token-file or set EDGEMART_TOKEN")
    return token


def _export(args: argparse.Namespace) -> int:
    from models.export import export_logs, shipped_specs  # noqa: PLC0415 - pydantic

    stats = export_logs(args.data_dir, args.out, fallback=shipped_specs())
    print(f"wrote {stats.written} examples ({stats.clicks} clicks) to {args.out}")
    if stats.skipped:
        print(f"skipped: {json.dumps(stats.skipped, sort_keys=True)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from models.evaluate import evaluate_examples  # noqa: PLC0415 - the train extra
    from models.features import FEATURE_SETS  # noqa: PLC0415
    from models.gbdt import GbdtParams  # noqa: PLC0415
    from models.logs import read_examples  # noqa: PLC0415
    from models.train import write_model  # noqa: PLC0415

    names = FEATURE_SETS[args.spec_version]
    examples = read_examples(args.logs, names)
    result = write_model(
        examples, args.out, family=args.family, gbdt=GbdtParams(seed=args.seed), names=names
    )
    print(f"wrote {result.model_path} and {result.manifest_path}")
    if args.holdout is not None:
        holdout = read_examples(args.holdout, names)
        report = evaluate_examples(args.out, examples, holdout, seed=args.seed)
        print((args.out / TABLE_FILE).read_text(encoding="utf-8"), end="")
        print(json.dumps(report["vs_popularity"]))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from models.publish import publish  # noqa: PLC0415 - aiohttp

    profiles = [p for p in args.profiles.split(",") if p]
    result = asyncio.run(
        publish(
            args.gateway,
            _token(args),
            args.dir,
            version=args.version,
            profiles=profiles or None,
            expires_in=timedelta(days=args.expires_days),
            percent=args.rollout,
            cohort=args.cohort,
        )
    )
    registered = result["registered"]
    print(f"registered {registered['name']} v{registered['version']} sha256 {registered['sha256']}")
    if "rollout" in result:
        roll = result["rollout"]
        print(f"rolled out to {args.rollout}% on {', '.join(roll['profiles'])}")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from models.publish import rollout  # noqa: PLC0415 - aiohttp

    result = asyncio.run(
        rollout(args.gateway, _token(args), args.version, percent=args.percent, cohort=args.cohort)
    )
    print(f"v{args.version} at {args.percent}% on {', '.join(result['profiles'])}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from models.retrain import retrain  # noqa: PLC0415 - aiohttp and the train extra

    result, registered = asyncio.run(
        retrain(
            args.gateway,
            _token(args),
            args.data_dir,
            args.work,
            version=args.version,
            family=args.family,
            seed=args.seed,
            holdout_share=args.holdout_share,
            tolerance=args.tolerance,
        )
    )
    print(
        f"registered candidate v{registered['version']} (not rolled out): held-out AUC "
        f"{result.candidate_auc:.4f} vs the current v{result.current_version}'s "
        f"{result.current_auc:.4f} on {result.holdout} impressions"
    )
    return 0


def _build_default(args: argparse.Namespace) -> int:
    from models.build_default import build_default  # noqa: PLC0415 - the train extra

    result = build_default(
        args.out,
        seed=args.seed,
        households=args.households,
        logs_dir=args.logs,
        spec_version=args.spec_version,
    )
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
