"""The model registry: validate uploaded models, sign their manifests, serve files, roll out.

`POST /v1/models` (multipart: `manifest` JSON without kid/sig, `model` the ONNX bytes, with
an operator token) checks the manifest against the bytes (sha256, size), the version (only
increasing), the expiry and that onnxruntime opens the file with the spec's input and width;
it stores the file under `DATA_DIR/models/`. `POST /v1/models/{version}/rollout` with
`{"cohort": "all" | "profile:<p>", "percent": 0..100}` signs the manifest with the
gateway's key (with `url` and `rollout` set) and publishes it retained on
`models/{profile}/manifest`. `GET /v1/models/{version}/model.onnx` serves the file without
a token: devices check it against the signed manifest, not the channel.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from aiohttp import BodyPartReader, web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from cloud_gateway.api import TOKEN_ID, ApiProblem
from cloud_gateway.errors import NotFound
from cloud_gateway.store import Database, Store
from protocol import codec
from protocol.envelopes import ModelManifest
from protocol.errors import ProtocolError
from protocol.ids import format_time, utcnow
from protocol.signing import Signer
from protocol.topics import Topics
from protocol.vocabulary import PROFILES

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024
FILE_PATH = re.compile(r"^/v1/models/[0-9]{1,9}/model\.onnx$")
"""The one registry path served without a token (see `cloud_gateway.api.PUBLIC_PATTERNS`)."""

Publish = Callable[[str, bytes, bool], Awaitable[None]]
Cohort = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9:_-]{0,63}$")]


class RolloutIn(BaseModel):
    """Body of `POST /v1/models/{version}/rollout`."""

    model_config = ConfigDict(extra="forbid")

    cohort: Cohort = "all"
    percent: Annotated[int, Field(ge=0, le=100)]


# ------------------------------------------------------------------ SQL (runs on the DB thread)


def _latest_version(store: Store) -> int:
    row = store.conn.execute("SELECT max(version) FROM models").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _insert_model(store: Store, manifest: ModelManifest, who: str) -> None:
    with store.conn:
        store.conn.execute(
            "INSERT INTO models (version, name, sha256, size, profiles, manifest, registered_at,"
            " registered_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                manifest.version,
                manifest.name,
                manifest.sha256,
                manifest.size,
                json.dumps(manifest.profiles),
                json.dumps(manifest.to_wire(), separators=(",", ":")),
                format_time(utcnow()),
                who,
            ],
        )


def _get_model(store: Store, version: int) -> dict[str, Any] | None:
    row = store.conn.execute("SELECT * FROM models WHERE version = ?", [version]).fetchone()
    return dict(row) if row is not None else None


def _list_models(store: Store) -> list[dict[str, Any]]:
    models = [dict(r) for r in store.conn.execute("SELECT * FROM models ORDER BY version")]
    rollouts = [dict(r) for r in store.conn.execute("SELECT * FROM model_rollouts")]
    for model in models:
        model["profiles"] = json.loads(model["profiles"])
        model["manifest"] = json.loads(model["manifest"])
        model["rollouts"] = {
            r["profile"]: {"cohort": r["cohort"], "percent": r["percent"]}
            for r in rollouts
            if r["version"] == model["version"]
        }
    return models


def _published(store: Store) -> dict[str, int]:
    rows = store.conn.execute("SELECT profile, version FROM model_rollouts").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _record_rollout(
    store: Store, profile: str, version: int, *, cohort: str, percent: int, signed: dict[str, Any]
) -> None:
    with store.conn:
        store.conn.execute(
            "INSERT OR REPLACE INTO model_rollouts (profile, version, cohort, percent, manifest,"
            " published_at) VALUES (?, ?, ?, ?, ?, ?)",
            [profile, version, cohort, percent, json.dumps(signed), format_time(utcnow())],
        )


# ------------------------------------------------------------------ pure checks


def check_model_bytes(manifest: ModelManifest, data: bytes) -> None:
    """Raise ApiProblem(400) unless `data` is the file `manifest` describes and opens."""
    if len(data) != manifest.size:
        raise ApiProblem(
            400, "Bad Request", f"model: {len(data)} bytes, the manifest says {manifest.size}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ApiProblem(
            400, "Bad Request", f"model: sha256 {digest}, the manifest says {manifest.sha256}"
        )
    import onnxruntime  # noqa: PLC0415  # heavy; only the registry needs it

    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ApiProblem(400, "Bad Request", f"model: onnxruntime cannot open it: {exc}") from exc
    spec = manifest.feature_spec
    inputs = session.get_inputs()
    shape = list(inputs[0].shape or []) if len(inputs) == 1 else []
    if len(inputs) != 1 or inputs[0].name != spec.input_name or len(shape) != 2:
        raise ApiProblem(
            400, "Bad Request", f"model: expected one input {spec.input_name!r} of shape [N, F]"
        )
    if isinstance(shape[1], int) and shape[1] != len(spec.features):
        raise ApiProblem(
            400,
            "Bad Request",
            f"model: takes {shape[1]} features, the spec lists {len(spec.features)}",
        )
    if spec.output_name not in {o.name for o in session.get_outputs()}:
        raise ApiProblem(400, "Bad Request", f"model: no output {spec.output_name!r}")


def cohort_profiles(cohort: str, profiles: list[str]) -> list[str]:
    """The manifest topics a rollout to `cohort` goes to (manifests are retained per profile)."""
    if cohort == "all":
        return list(profiles)
    if cohort.startswith("profile:") and cohort[len("profile:") :] in PROFILES:
        wanted = cohort[len("profile:") :]
        if wanted not in profiles:
            raise ApiProblem(409, "Conflict", f"the model is not built for profile {wanted!r}")
        return [wanted]
    raise ApiProblem(
        400,
        "Bad Request",
        f"cohort {cohort!r}: model rollouts target 'all' or 'profile:<name>' "
        "(devices subscribe to one manifest per profile); narrow further with percent",
    )


# ------------------------------------------------------------------ the service


class ModelRegistry:
    """Registered models on disk and in the DB; signs and publishes manifests on rollout."""

    def __init__(
        self,
        db: Database,
        *,
        signer: Signer,
        topics: Topics,
        publish: Publish,
        counters: Counter[str],
        models_dir: Path,
    ) -> None:
        self.db = db
        self.signer = signer
        self.topics = topics
        self.publish = publish
        self.counters = counters
        self.models_dir = models_dir
        self._lock = asyncio.Lock()

    def file_path(self, version: int) -> Path:
        return self.models_dir / f"v{version}.onnx"

    async def register(self, raw_manifest: Any, data: bytes, who: str) -> dict[str, Any]:
        """Validate and store an uploaded model; returns the registered (unsigned) manifest."""
        if not isinstance(raw_manifest, dict) or {"kid", "sig"} & set(raw_manifest):
            raise ApiProblem(
                400, "Bad Request", "manifest: a JSON object without kid/sig (the gateway signs)"
            )
        try:
            manifest = codec.validate(raw_manifest, ModelManifest)
        except ProtocolError as exc:
            raise ApiProblem(400, "Bad Request", f"manifest: {exc}") from exc
        if manifest.expires_at <= utcnow():
            raise ApiProblem(400, "Bad Request", f"manifest: expired at {manifest.expires_at}")
        await asyncio.to_thread(check_model_bytes, manifest, data)
        async with self._lock:
            latest = await self.db.call(_latest_version)
            if manifest.version <= latest:
                self.counters["models_refused_version"] += 1
                raise ApiProblem(
                    409,
                    "Conflict",
                    f"version {manifest.version} is not above the latest registered ({latest})",
                )
            await asyncio.to_thread(_write_file, self.file_path(manifest.version), data)
            await self.db.call(_insert_model, manifest, who)
        self.counters["models_registered"] += 1
        log.info("model %s v%d registered by %s", manifest.name, manifest.version, who)
        return manifest.to_wire()

    async def rollout(self, version: int, body: RolloutIn, base_url: str) -> dict[str, Any]:
        """Sign the manifest for `body.percent` and publish it retained per targeted profile."""
        row = await self.db.call(_get_model, version)
        if row is None:
            raise NotFound("model", str(version))
        manifest = json.loads(row["manifest"])
        profiles = cohort_profiles(body.cohort, manifest["profiles"])
        async with self._lock:
            published = await self.db.call(_published)
            for profile in profiles:
                if published.get(profile, 0) > version:
                    raise ApiProblem(
                        409,
                        "Conflict",
                        f"profile {profile} already runs v{published[profile]}; devices refuse "
                        f"an older version (publish a new version to roll back)",
                    )
            url = f"{base_url}/v1/models/{version}/model.onnx"
            signed = self.signer.sign({**manifest, "url": url, "rollout": body.percent})
            for profile in profiles:
                await self.publish(
                    self.topics.model_manifest(profile), codec.encode_dict(signed), True
                )
                await self.db.call(
                    _record_rollout,
                    profile,
                    version,
                    cohort=body.cohort,
                    percent=body.percent,
                    signed=signed,
                )
        self.counters["model_rollouts"] += 1
        log.info("model v%d at %d%% on %s", version, body.percent, ", ".join(profiles))
        return {"version": version, "profiles": profiles, "manifest": signed}

    async def list(self) -> list[dict[str, Any]]:
        return await self.db.call(_list_models)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------ HTTP


REGISTRY = web.AppKey("model_registry", ModelRegistry)


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiProblem(413, "Payload Too Large", f"{part.name}: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def register_model(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        raise ApiProblem(
            400, "Bad Request", "send multipart/form-data with parts 'manifest' and 'model'"
        )
    reader = await request.multipart()
    parts: dict[str, bytes] = {}
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name not in ("manifest", "model"):
            raise ApiProblem(400, "Bad Request", "only the parts 'manifest' and 'model' are known")
        limit = MAX_MANIFEST_BYTES if part.name == "manifest" else MAX_MODEL_BYTES
        parts[part.name] = await _read_part(part, limit)
    missing = {"manifest", "model"} - set(parts)
    if missing:
        raise ApiProblem(400, "Bad Request", f"missing part(s): {', '.join(sorted(missing))}")
    try:
        raw = json.loads(parts["manifest"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiProblem(400, "Bad Request", f"manifest: not JSON: {exc}") from exc
    doc = await request.app[REGISTRY].register(raw, parts["model"], f"token:{request[TOKEN_ID]}")
    return web.json_response(doc, status=201)


async def rollout_model(request: web.Request) -> web.Response:
    version = _version(request)
    try:
        body = RolloutIn.model_validate_json(await request.read())
    except ValidationError as exc:
        raise ApiProblem(
            400, "Bad Request", "the rollout is invalid", errors=codec.field_errors(exc)
        ) from exc
    base = f"{request.scheme}://{request.host}"
    return web.json_response(await request.app[REGISTRY].rollout(version, body, base))


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"models": await request.app[REGISTRY].list()})


async def model_file(request: web.Request) -> web.StreamResponse:
    path = request.app[REGISTRY].file_path(_version(request))
    if not await asyncio.to_thread(path.is_file):
        raise NotFound("model file", request.match_info["version"])
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


def _version(request: web.Request) -> int:
    text = request.match_info["version"]
    if not text.isdigit() or len(text) > 9:
        raise ApiProblem(400, "Bad Request", f"version {text[:20]!r} is not a positive integer")
    return int(text)


def add_model_routes(app: web.Application, registry: ModelRegistry) -> None:
    """Mount the registry's routes on the operators' API app (before it starts)."""
    app[REGISTRY] = registry
    app.router.add_post("/v1/models", register_model)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/models/{version}/rollout", rollout_model)
    app.router.add_get("/v1/models/{version}/model.onnx", model_file)
