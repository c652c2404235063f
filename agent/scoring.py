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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from agent.errors import ModelRejected, ScoringError
from agent.features import KNOWN_FEATURES, PERSONAL_FEATURES, UserContext
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
            manifest = codec.validate(manifest, ModelManifest)
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


_TYPE_CODE = {t: float(i) for i, t in enumerate(OFFER_TYPES)}
_get_discount = attrgetter("discount")
_get_price = attrgetter("price")
_get_priority = attrgetter("priority")
_get_limited = attrgetter("limited")
_get_type = attrgetter("type")
_get_category = attrgetter("category")


class _Columns:
    """Per-offer arrays computed lazily, at most once per `build_matrix` call."""

    __slots__ = ("_categories", "_floats", "_types", "ctx", "n", "offers")

    def __init__(self, offers: Sequence[Offer], ctx: UserContext) -> None:
        self.offers = offers
        self.ctx = ctx
        self.n = len(offers)
        self._floats: dict[str, np.ndarray] = {}
        self._types: np.ndarray | None = None
        self._categories: tuple[list[str], np.ndarray] | None = None

    def floats(self, name: str, getter: Callable[[Offer], float]) -> np.ndarray:
        got = self._floats.get(name)
        if got is None:
            got = self._floats[name] = np.fromiter(map(getter, self.offers), np.float64, self.n)
        return got

    def type_codes(self) -> np.ndarray:
        if self._types is None:
            types = map(_get_type, self.offers)
            self._types = np.fromiter(map(_TYPE_CODE.get, types, repeat(-1.0)), np.float64, self.n)
        return self._types

    def category_codes(self) -> tuple[list[str], np.ndarray]:
        """The distinct categories and, per offer, the index of its category among them."""
        if self._categories is None:
            cats = list(map(_get_category, self.offers))
            distinct = list(dict.fromkeys(cats))
            index = {cat: i for i, cat in enumerate(distinct)}
            codes = np.fromiter(map(index.__getitem__, cats), np.intp, self.n)
            self._categories = (distinct, codes)
        return self._categories

    def lookup(self, table: Mapping[str, float], missing: float) -> np.ndarray:
        if not table:
            return np.full(self.n, missing)
        distinct, codes = self.category_codes()
        values = np.array([table.get(cat, missing) for cat in distinct], dtype=np.float64)
        taken: np.ndarray = values[codes]
        return taken

    def column(self, name: str) -> np.ndarray | float:
        ctx = self.ctx
        if name == "offer.discount":
            return self.floats(name, _get_discount)
        if name == "offer.log_price":
            log_price: np.ndarray = np.log1p(self.floats("offer.price", _get_price))
            return log_price
        if name == "offer.priority":
            return self.floats(name, _get_priority) / 100.0
        if name == "offer.limited":
            return self.floats(name, _get_limited)
        if name.startswith("offer.type."):
            code = _TYPE_CODE[name[len("offer.type.") :]]
            return np.asarray(self.type_codes() == code, dtype=np.float64)
        if name == "user.category_count_24h":
            return self.lookup(ctx.category_24h, 0.0)
        if name == "user.category_count_7d":
            return self.lookup(ctx.category_7d, 0.0)
        if name == "user.consumable_need":
            return self.lookup(ctx.consumable_need, 0.0)
        if name == "user.member_tier":
            return float(ctx.member_tier)
        if name == "ctx.hour_sin":
            return math.sin(2 * math.pi * ctx.local_hour / 24)
        if name == "ctx.hour_cos":
            return math.cos(2 * math.pi * ctx.local_hour / 24)
        if name.startswith("ctx.profile."):
            return 1.0 if ctx.profile == name[len("ctx.profile.") :] else 0.0
        raise ModelRejected(f"spec names unknown feature {name!r}")


def build_matrix(spec: FeatureSpec, offers: Sequence[Offer], ctx: UserContext) -> np.ndarray:
    """The scaled float32 `[N, F]` input for `offers`, columns in `spec` order.

    Each column is `(x - mean) / scale`; a personal feature takes its `default` as `x` when
    `ctx` is not personalized.
    """
    plan = _plan(spec)
    if not offers:
        return np.empty((0, len(plan.names)), dtype=np.float32)
    columns = _Columns(offers, ctx)
    raw = np.empty((len(plan.names), len(offers)), dtype=np.float32)  # filled row = column
    for j, name in enumerate(plan.names):
        if plan.personal[j] and not ctx.personalized:
            raw[j] = plan.default[j]
        else:
            raw[j] = columns.column(name)
    raw -= plan.mean[:, None]
    raw /= plan.scale[:, None]
    return np.ascontiguousarray(raw.T)
