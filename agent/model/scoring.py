"""Model loading and scoring: verified ONNX files, one shared session per file, input tensors.

`load_model` refuses (with `ModelRejected` and a reason) any file or manifest the agent cannot
serve; `build_matrix` turns candidate offers and a `UserContext` into the model's scaled input,
column by column with numpy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from agent.decide.catalog import Catalog, build_catalog
from agent.errors import ModelRejected, ScoringError
from agent.features.windows import KNOWN_FEATURES, PERSONAL_FEATURES, RECENCY_CAP_H, UserContext
from protocol import codec
from protocol.envelopes import FeatureSpec, ModelManifest, Offer
from protocol.errors import ProtocolError
from protocol.vocabulary import OFFER_TYPES

log = logging.getLogger(__name__)

MAX_SESSIONS = 8
"""Sessions kept process-wide (by file sha256); a simulator's agents share them."""

_ORT_ERRORS: tuple[type[BaseException], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NoModel,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    ort_state.EPFail,
    ort_state.EngineError,
    RuntimeError,
    ValueError,
)

_sessions: OrderedDict[str, ort.InferenceSession] = OrderedDict()
_sessions_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Model:
    """A verified model: its manifest facts and the shared session that scores it."""

    name: str
    version: int
    spec: FeatureSpec
    sha256: str
    path: Path
    session: ort.InferenceSession = field(repr=False, compare=False)
    manifest: ModelManifest | None = field(default=None, repr=False, compare=False)

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """Scores of a float32 `[N, F]` matrix of scaled inputs, as a float64 `[N]` array."""
        try:
            out = self.session.run([self.spec.output_name], {self.spec.input_name: matrix})[0]
        except _ORT_ERRORS as exc:
            raise ScoringError(f"model {self.name} v{self.version} failed to run: {exc}") from exc
        scores = np.asarray(out, dtype=np.float64).reshape(-1)
        if scores.shape[0] != matrix.shape[0]:
            raise ScoringError(
                f"model {self.name} v{self.version} gave {scores.shape[0]} scores "
                f"for {matrix.shape[0]} rows"
            )
        return scores


def default_model_paths() -> tuple[Path, Path]:
    """`(model.onnx, manifest.json)` of the shipped default model (`models/default/`)."""
    base = _default_dir()
    return base / "model.onnx", base / "manifest.json"


def _default_dir() -> Path:
    try:
        return Path(str(files("models") / "default"))
    except NotADirectoryError:
        # An editable install made while `models/` had no __init__.py maps it as a namespace
        # package whose path holds setuptools' path-hook marker, which importlib.resources
        # cannot multiplex (only when imported from outside the checkout). Use the real folder.
        import models  # noqa: PLC0415  # data lookup only; models/__init__.py imports nothing

        for entry in models.__path__:
            if Path(entry).is_dir():
                return Path(entry) / "default"
        raise


def load_default_model() -> Model:
    """Load the shipped default model (trusted as firmware: its manifest is unsigned)."""
    onnx_path, manifest_path = default_model_paths()
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelRejected(f"cannot read the default manifest {manifest_path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelRejected(f"default manifest {manifest_path} is not a JSON object")
    return load_model(onnx_path, manifest)


def load_model(onnx_path: Path, manifest: dict[str, Any] | ModelManifest) -> Model:
    """Verify `onnx_path` against `manifest` and open (or reuse) its session.

    Raises `ModelRejected` naming the reason: invalid manifest, unknown feature, missing file,
    size or sha256 mismatch, corrupt file, input/output names or width not matching the spec,
    or a smoke run (two rows of defaults) that fails or gives non-finite scores.
    """
    if isinstance(manifest, dict):
        try:
            # a kept manifest is stored as signed: fields a newer gateway added are ignored
            manifest = codec.validate_tolerant(manifest, ModelManifest)[0]
        except ProtocolError as exc:
            raise ModelRejected(f"invalid manifest: {exc}") from exc
    version = manifest.version
    spec = manifest.feature_spec
    check_spec(spec, version=version)
    try:
        size = onnx_path.stat().st_size
        if size != manifest.size:
            raise ModelRejected(
                f"size mismatch: file has {size} bytes, manifest says {manifest.size}",
                version=version,
            )
        data = onnx_path.read_bytes()
    except OSError as exc:
        raise ModelRejected(f"cannot read model file {onnx_path}: {exc}", version=version) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ModelRejected(
            f"sha256 mismatch: file is {digest[:12]}…, manifest says {manifest.sha256[:12]}…",
            version=version,
        )
    session = _session(digest, data, version)
    _check_signature(session, spec, version)
    model = Model(
        name=manifest.name,
        version=version,
        spec=spec,
        sha256=digest,
        path=onnx_path,
        session=session,
        manifest=manifest,
    )
    _smoke(model)
    log.info(
        "model %s v%d loaded (%d features, sha256 %s)",
        model.name,
        version,
        len(spec.features),
        digest[:12],
    )
    return model


def check_spec(spec: FeatureSpec, *, version: int | None = None) -> None:
    """Refuse a spec naming a feature this agent cannot compute, or naming one twice."""
    seen: set[str] = set()
    for name in spec.names:
        if name not in KNOWN_FEATURES:
            raise ModelRejected(f"spec names unknown feature {name!r}", version=version)
        if name in seen:
            raise ModelRejected(f"spec names feature {name!r} twice", version=version)
        seen.add(name)


def _session(digest: str, data: bytes, version: int) -> ort.InferenceSession:
    with _sessions_lock:
        session = _sessions.get(digest)
        if session is not None:
            _sessions.move_to_end(digest)
            return session
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except _ORT_ERRORS as exc:
            raise ModelRejected(f"corrupt model file: {exc}", version=version) from exc
        _sessions[digest] = session
        while len(_sessions) > MAX_SESSIONS:
            _sessions.popitem(last=False)
        return session


def _check_signature(session: ort.InferenceSession, spec: FeatureSpec, version: int) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelRejected(f"model has {len(inputs)} inputs, expected one", version=version)
    (tensor,) = inputs
    if tensor.name != spec.input_name:
        raise ModelRejected(
            f"input name {tensor.name!r} does not match the spec's {spec.input_name!r}",
            version=version,
        )
    if tensor.type != "tensor(float)":
        raise ModelRejected(f"input type {tensor.type} is not tensor(float)", version=version)
    shape = list(tensor.shape or [])
    width = len(spec.features)
    if len(shape) != 2:
        raise ModelRejected(f"input rank {len(shape)}, expected [N, {width}]", version=version)
    if isinstance(shape[1], int) and shape[1] != width:
        raise ModelRejected(
            f"input width mismatch: model takes {shape[1]} features, spec lists {width}",
            version=version,
        )
    outputs = {out.name: out for out in session.get_outputs()}
    if spec.output_name not in outputs:
        raise ModelRejected(
            f"model has no output {spec.output_name!r} (has {sorted(outputs)})", version=version
        )
    out_shape = list(outputs[spec.output_name].shape or [])
    one_per_row = len(out_shape) == 1 or (
        len(out_shape) == 2 and (out_shape[1] == 1 or not isinstance(out_shape[1], int))
    )
    if not one_per_row:
        raise ModelRejected(f"output shape {out_shape}, expected [N] or [N, 1]", version=version)


def warm(model: Model) -> None:
    """Score the model's default row once: after a page-out (agent/runtime/memory.py) this brings
    its pages back at start, off the path of the next real decision."""
    _smoke(model)


def _smoke(model: Model) -> None:
    plan = _plan(model.spec)
    row = (plan.default - plan.mean) / plan.scale
    matrix = np.ascontiguousarray(np.stack([row, row]), dtype=np.float32)
    try:
        scores = model.score(matrix)
    except ScoringError as exc:
        raise ModelRejected(f"smoke run failed: {exc}", version=model.version) from exc
    if not np.all(np.isfinite(scores)):
        raise ModelRejected(f"non-finite test score {scores.tolist()}", version=model.version)


# ---------------------------------------------------------------------- input tensor


@dataclass(frozen=True, slots=True, eq=False)
class _Plan:
    """A spec pre-digested for `build_matrix`: names and float32 vectors of its parameters."""

    spec: FeatureSpec
    names: tuple[str, ...]
    personal: tuple[bool, ...]
    default: np.ndarray
    mean: np.ndarray
    scale: np.ndarray


_plans: dict[int, _Plan] = {}
_MAX_PLANS = 16


def _plan(spec: FeatureSpec) -> _Plan:
    plan = _plans.get(id(spec))
    if plan is not None and plan.spec is spec:
        return plan
    feats = spec.features
    plan = _Plan(
        spec=spec,
        names=tuple(f.name for f in feats),
        # the agent's own table decides what is personal, whatever the spec claims
        personal=tuple(f.personal or f.name in PERSONAL_FEATURES for f in feats),
        default=np.array([f.default for f in feats], dtype=np.float32),
        mean=np.array([f.mean for f in feats], dtype=np.float32),
        scale=np.array([f.scale for f in feats], dtype=np.float32),
    )
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[id(spec)] = plan
    return plan


def build_matrix(spec: FeatureSpec, offers: Sequence[Offer], ctx: UserContext) -> np.ndarray:
    """The scaled float32 `[N, F]` input for `offers` (in their order), columns in `spec` order.

    Each column is `(x - mean) / scale`; a personal feature takes its `default` as `x` when
    `ctx` is not personalized. (Decisions use `prepare_inputs` on the held catalog instead.)
    """
    plan = _plan(spec)
    if not offers:
        return np.empty((0, len(plan.names)), dtype=np.float32)
    catalog = build_catalog(offers)
    rows = np.argsort(catalog.source, kind="stable")
    return PreparedInputs(spec, catalog).matrix(rows, ctx)


# ---------------------------------------------------------------------- columnar fast path

_OFFER_COLUMNS = ("offer.discount", "offer.log_price", "offer.priority", "offer.limited")
_CATEGORY_COLUMNS = (
    "user.category_count_24h",
    "user.category_count_7d",
    "user.consumable_need",
    "user.category_count_1h",
    "user.category_decayed",
    "user.category_recency_h",
    "user.category_seconds_24h",
    "user.category_seconds_7d",
)


def _category_values(name: str, ctx: UserContext) -> tuple[Mapping[str, float], float]:
    """The per-category table behind a `user.category_*` feature and its value when absent."""
    stats = ctx.stats
    tables: dict[str, tuple[Mapping[str, float], float]] = {
        "user.category_count_24h": (ctx.category_24h, 0.0),
        "user.category_count_7d": (ctx.category_7d, 0.0),
        "user.consumable_need": (ctx.consumable_need, 0.0),
        "user.category_count_1h": (stats.hour, 0.0),
        "user.category_decayed": (stats.decayed, 0.0),
        "user.category_recency_h": (stats.recency_h, RECENCY_CAP_H),
        "user.category_seconds_24h": (stats.seconds_day, 0.0),
        "user.category_seconds_7d": (stats.seconds_week, 0.0),
    }
    return tables[name]


def _scalar_value(name: str, ctx: UserContext) -> float:
    """A feature that is the same for every candidate of one decision."""
    if name == "user.member_tier":
        return float(ctx.member_tier)
    if name == "user.owned_devices":
        return float(len(ctx.owned))
    if name == "ctx.hour_sin":
        return math.sin(2 * math.pi * ctx.local_hour / 24)
    if name == "ctx.hour_cos":
        return math.cos(2 * math.pi * ctx.local_hour / 24)
    week = (ctx.local_weekday + ctx.local_hour / 24) / 7
    if name == "ctx.dow_sin":
        return math.sin(2 * math.pi * week)
    if name == "ctx.dow_cos":
        return math.cos(2 * math.pi * week)
    if name == "ctx.weekend":
        return 1.0 if ctx.local_weekday >= 5 else 0.0
    if name.startswith("ctx.profile."):
        return 1.0 if ctx.profile == name[len("ctx.profile.") :] else 0.0
    raise ModelRejected(f"spec names unknown feature {name!r}")


class PreparedInputs:
    """A spec applied to a catalog once: every offer-side column scaled in advance.

    `matrix(rows, ctx)` then costs a row gather and two column assignments, whatever the spec.
    """

    __slots__ = (
        "_cat_cache",
        "cat_cols",
        "catalog",
        "plan",
        "scalar_cols",
        "scalar_names",
        "static",
    )

    def __init__(self, spec: FeatureSpec, catalog: Catalog) -> None:
        plan = _plan(spec)
        self.plan = plan
        self.catalog = catalog
        n, width = len(catalog), len(plan.names)
        raw = np.zeros((width, n), dtype=np.float64)
        cat_cols: list[int] = []
        scalar_cols: list[int] = []
        for j, name in enumerate(plan.names):
            if name == "offer.discount":
                raw[j] = catalog.discount
            elif name == "offer.log_price":
                raw[j] = np.log1p(catalog.price)
            elif name == "offer.priority":
                raw[j] = catalog.priority / 100.0
            elif name == "offer.limited":
                raw[j] = catalog.limited
            elif name.startswith("offer.type."):
                code = OFFER_TYPES.index(name[len("offer.type.") :])
                raw[j] = catalog.type_code == code
            elif name in _CATEGORY_COLUMNS:
                cat_cols.append(j)
            else:
                _scalar_value(name, _PROBE)  # refuses unknown names now, not mid-decision
                scalar_cols.append(j)
        raw -= plan.mean[:, None]
        raw /= plan.scale[:, None]
        self.static = np.ascontiguousarray(raw.T, dtype=np.float32)
        self.cat_cols = np.array(cat_cols, dtype=np.intp)
        self.scalar_cols = np.array(scalar_cols, dtype=np.intp)
        self.scalar_names = tuple(plan.names[j] for j in scalar_cols)
        self._cat_cache: tuple[tuple[object, ...], np.ndarray] | None = None

    def _category_block(self, ctx: UserContext) -> np.ndarray:
        """`[n_categories, len(cat_cols)]` scaled values, cached while the context's tables are
        the same objects (the feature windows hand out the same ones for a minute)."""
        key = (ctx.category_24h, ctx.category_7d, ctx.consumable_need, ctx.stats)
        cached = self._cat_cache
        if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
            return cached[1]
        plan = self.plan
        cats = self.catalog.categories
        block = np.empty((len(cats), len(self.cat_cols)), dtype=np.float64)
        for k, j in enumerate(self.cat_cols.tolist()):
            table, missing = _category_values(plan.names[j], ctx)
            block[:, k] = [table.get(c, missing) for c in cats]
        block -= plan.mean[self.cat_cols]
        block /= plan.scale[self.cat_cols]
        scaled = block.astype(np.float32)
        self._cat_cache = (key, scaled)
        return scaled

    def matrix(self, rows: np.ndarray, ctx: UserContext) -> np.ndarray:
        """The scaled float32 `[len(rows), F]` input for catalog `rows` under `ctx`."""
        plan = self.plan
        m: np.ndarray = self.static[rows]
        personal = plan.personal
        if len(self.cat_cols):
            if ctx.personalized:
                m[:, self.cat_cols] = self._category_block(ctx)[self.catalog.cat_code[rows]]
            else:
                cols = self.cat_cols
                m[:, cols] = (plan.default[cols] - plan.mean[cols]) / plan.scale[cols]
        if len(self.scalar_cols):
            values = [
                float(plan.default[j])
                if personal[j] and not ctx.personalized
                else _scalar_value(name, ctx)
                for j, name in zip(self.scalar_cols.tolist(), self.scalar_names, strict=True)
            ]
            cols = self.scalar_cols
            m[:, cols] = (np.array(values) - plan.mean[cols]) / plan.scale[cols]
        return m


_PROBE = UserContext("hub", 0.0, {}, {}, {}, 0, False)
_prepared: dict[tuple[int, int], PreparedInputs] = {}


def prepare_inputs(spec: FeatureSpec, catalog: Catalog) -> PreparedInputs:
    """The (cached) `PreparedInputs` of `spec` on `catalog`."""
    key = (id(spec), id(catalog))
    got = _prepared.get(key)
    if got is not None and got.plan.spec is spec and got.catalog is catalog:
        return got
    got = PreparedInputs(spec, catalog)
    if len(_prepared) >= _MAX_PLANS:
        _prepared.clear()
    _prepared[key] = got
    return got
