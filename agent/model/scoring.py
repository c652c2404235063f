"""Model loading and scoring: verified ONNX files, one shared session per file, run on inputs.

`load_model` refuses (with `ModelRejected` and a reason) any file or manifest the agent cannot
serve; the scaled input tensors a model scores are built in `agent.model.inputs`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ModelRejected, ScoringError
from agent.features.context import KNOWN_FEATURES
from protocol import codec
from protocol.envelopes import FeatureSpec, ModelManifest
from protocol.errors import ProtocolError

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort

log = logging.getLogger(__name__)

MAX_SESSIONS = 8
"""Sessions kept process-wide (by file sha256); a simulator's agents share them."""

_ort_errors: tuple[type[BaseException], ...] = ()


def _runtime() -> tuple[Any, tuple[type[BaseException], ...]]:
    """onnxruntime and the errors it raises, imported on the first model load: a thin device
    (`ranking = "thin"`) never loads a model, so never maps onnxruntime's ~40 MB."""
    global _ort_errors  # noqa: PLW0603 - filled once, on the first load
    import onnxruntime  # noqa: PLC0415 - lazy on purpose (above)
    from onnxruntime.capi import onnxruntime_pybind11_state as state  # noqa: PLC0415

    if not _ort_errors:
        _ort_errors = (
            state.Fail,
            state.InvalidArgument,
            state.InvalidGraph,
            state.InvalidProtobuf,
            state.NoSuchFile,
            state.NoModel,
            state.NotImplemented,
            state.RuntimeException,
            state.EPFail,
            state.EngineError,
            RuntimeError,
            ValueError,
        )
    return onnxruntime, _ort_errors


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
        import numpy as np  # noqa: PLC0415 - numpy comes with a model (a thin device has none)

        try:
            out = self.session.run([self.spec.output_name], {self.spec.input_name: matrix})[0]
        except _ort_errors as exc:
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
        manifest = codec.loads_finite(manifest_path.read_bytes())
    except (OSError, ValueError, ProtocolError) as exc:
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
        ort, errors = _runtime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except errors as exc:
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
    import numpy as np  # noqa: PLC0415 - with the model (above)

    from agent.model.inputs import spec_plan  # noqa: PLC0415 - numpy and the catalog columns

    plan = spec_plan(model.spec)
    row = (plan.default - plan.mean) / plan.scale
    matrix = np.ascontiguousarray(np.stack([row, row]), dtype=np.float32)
    try:
        scores = model.score(matrix)
    except ScoringError as exc:
        raise ModelRejected(f"smoke run failed: {exc}", version=model.version) from exc
    if not np.all(np.isfinite(scores)):
        raise ModelRejected(f"non-finite test score {scores.tolist()}", version=model.version)
