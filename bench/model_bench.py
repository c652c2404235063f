"""The shipped model on a fresh seeded held-out world: beside the same boosted trees trained in
this run without the household's features (`model_precision_at_3`, feature spec v2 vs v1) and
beside popularity; its load time and size."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import onnxruntime

from agent.model.scoring import default_model_paths
from bench.record import Record
from models.evaluate import auc, popularity_scores
from models.features import FEATURE_NAMES, FEATURE_NAMES_V2
from models.gbdt import GbdtParams
from models.logs import Examples
from models.metrics import precision_at_k
from models.train import fit_logistic, scale_features, to_onnx, train_examples
from protocol.envelopes import ModelManifest
from protocol.vocabulary import PROFILES
from simulators.world import logged_arrays, make_world

SEED = 7
HOUSEHOLDS = 20_000
HOLDOUT_FROM = 16_000
SIZE_BUDGET = 1_000_000
LOADS = 20


def _examples(world_seed: int, ids: range, per: int, stream: int) -> Examples:
    world = make_world(world_seed, HOUSEHOLDS)
    logs = logged_arrays(world, ids, per, stream)
    return Examples(
        features=logs.features,
        clicked=logs.click.astype(np.float64),
        offer_ids=tuple(world.catalog.ids[o] for o in logs.offer.tolist()),
        device_ids=tuple(
            f"hh{h:06d}-{PROFILES[p]}"
            for h, p in zip(logs.household.tolist(), logs.profile.tolist(), strict=True)
        ),
        latest_at=None,  # type: ignore[arg-type]  # not used here
    )


def _columns(examples: Examples, width: int) -> Examples:
    """`examples` with only their first `width` feature columns."""
    return Examples(
        features=examples.features[:, :width],
        clicked=examples.clicked,
        offer_ids=examples.offer_ids,
        device_ids=examples.device_ids,
        latest_at=examples.latest_at,
    )


def _load_ms(models: list[bytes], width: int) -> list[float]:
    """Median ms of an onnxruntime session + first run, per model; the loads of the models
    take turns, so whatever the machine does meanwhile (another process, the spinning
    threads of a session not yet freed) falls on each of them alike."""
    times: list[list[float]] = [[] for _ in models]
    row = np.zeros((1, width), dtype=np.float32)
    for _ in range(LOADS):
        for data, spent in zip(models, times, strict=True):
            started = time.perf_counter()
            session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
            session.run(None, {"features": row})
            spent.append((time.perf_counter() - started) * 1000.0)
            del session
    return [statistics.median(spent) for spent in times]


def run() -> list[Record]:
    onnx_path, manifest_path = default_model_paths()
    manifest = ModelManifest.model_validate(json.loads(manifest_path.read_text()))
    data = onnx_path.read_bytes()
    train = _examples(SEED, range(HOLDOUT_FROM), 5, 0)
    # a fresh log stream (stream 9) of the held-out households: not the one evaluated at build
    holdout = _examples(SEED, range(HOLDOUT_FROM, HOUSEHOLDS), 60, 9)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    scaled = scale_features(holdout.features, manifest.feature_spec).astype(np.float32)
    (out,) = session.run(["score"], {"features": scaled})
    scores = np.asarray(out, dtype=np.float64).reshape(-1)
    popular = popularity_scores(train, holdout.offer_ids)
    y = holdout.clicked
    p3_model = precision_at_k(holdout.device_ids, y, scores, 3)[0]
    p3_pop = precision_at_k(holdout.device_ids, y, popular, 3)[0]
    spec = manifest.feature_spec
    # the baseline: the shipped family and settings on the v1 columns only (no household)
    v1 = len(FEATURE_NAMES)
    assert spec.names == list(FEATURE_NAMES_V2), "the shipped model is feature spec v2"
    without, v1_spec, _ = train_examples(
        _columns(train, v1), family="gbdt", gbdt=GbdtParams(seed=SEED), names=FEATURE_NAMES
    )
    v1_scores = without.predict(scale_features(holdout.features[:, :v1], v1_spec))
    p3_without = precision_at_k(holdout.device_ids, y, v1_scores, 3)[0]
    logistic, _ = fit_logistic(scale_features(train.features, spec), train.clicked)
    logistic_bytes = to_onnx(logistic, FEATURE_NAMES_V2)
    width = len(spec.features)
    load_ms, logistic_load_ms = _load_ms([data, logistic_bytes], width)
    note = f"{len(holdout)} held-out impressions, {len(set(holdout.device_ids))} devices"
    return [
        Record("model_auc", auc(y, scores), "AUC", "popularity_auc", auc(y, popular), note),
        Record(
            "model_precision_at_3",
            p3_model,
            "share clicked",
            "the same trees without household features (feature spec v1), same run",
            p3_without,
            note + "; top 3 of each device's logged impressions, held-out households; the"
            f" shipped v2 model with household features vs v1 trained here; popularity"
            f" {p3_pop:.4f} (ratio {p3_model / p3_pop:.2f}, goal >= 1.5)",
        ),
        Record(
            "model_load_ms",
            load_ms,
            "ms",
            "logistic_model_load_ms",
            logistic_load_ms,
            f"onnxruntime session + first run, median of {LOADS}, the two models taking turns",
        ),
        Record(
            "model_size_bytes",
            float(len(data)),
            "bytes",
            "size_budget_bytes",
            float(SIZE_BUDGET),
            f"{manifest.name} v{manifest.version}",
        ),
    ]
