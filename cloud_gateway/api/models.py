"""The model registry's HTTP routes on the operators' API (`cloud_gateway.registry.service`
does the work): `POST /v1/models` (multipart, bounded parts), `GET /v1/models`,
`GET /v1/models/{version}`, `POST /v1/models/{version}/rollout`, the experiments
(`POST /v1/models/{version}/experiment`, `GET /v1/experiments`,
`POST /v1/experiments/{id}/stop`) and the public
`GET /v1/models/{version}/model.onnx`.
"""

from __future__ import annotations

import asyncio

from aiohttp import BodyPartReader, web

from cloud_gateway.api.context import ctx, json_response, parse_json, read_body, who
from cloud_gateway.api.errors import ApiProblem
from cloud_gateway.api.routes import Answer, Route
from cloud_gateway.api.schemas import ExperimentList, ExperimentOut
from cloud_gateway.errors import NotFound
from cloud_gateway.registry.bodies import ExperimentIn, RolloutIn, StopIn
from cloud_gateway.registry.service import MAX_MANIFEST_BYTES, MAX_MODEL_BYTES
from protocol.envelopes import ModelManifest

TAGS = ("models",)
VERSION = {"version": "[0-9]{1,9}"}
"""A model version in a path: a positive integer of at most 9 digits (else 400)."""
EXPERIMENT = {"id": "model:[a-z0-9_.:-]{1,64}:[0-9]{1,9}"}
"""An experiment id in a path: `model:<name>:<version>` (`registry.experiments.experiment_id`;
a manifest's name is a `protocol.envelopes.Name`), else 400."""


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiProblem(413, "Payload Too Large", f"{part.name}: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_parts(request: web.Request) -> dict[str, bytes]:
    reader = await request.multipart()
    parts: dict[str, bytes] = {}
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name not in ("manifest", "model"):
            raise ApiProblem(400, "Bad Request", "only the parts 'manifest' and 'model' are known")
        limit = MAX_MANIFEST_BYTES if part.name == "manifest" else MAX_MODEL_BYTES
        parts[part.name] = await _read_part(part, limit)
    return parts


async def register_model(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        raise ApiProblem(
            400, "Bad Request", "send multipart/form-data with parts 'manifest' and 'model'"
        )
    try:
        parts = await _read_parts(request)
    except ValueError as exc:  # aiohttp's word for a missing boundary or a malformed body
        raise ApiProblem(400, "Bad Request", f"multipart body: {exc}") from exc
    missing = {"manifest", "model"} - set(parts)
    if missing:
        raise ApiProblem(400, "Bad Request", f"missing part(s): {', '.join(sorted(missing))}")
    raw = parse_json(parts["manifest"], "manifest")
    doc = await ctx(request).models.register(raw, parts["model"], who(request))
    return json_response(doc, status=201)


async def rollout_model(request: web.Request) -> web.Response:
    version = _version(request)
    body = await read_body(request, RolloutIn, "the rollout is invalid")
    base = f"{request.scheme}://{request.host}"
    return json_response(await ctx(request).models.rollout(version, body, base, who(request)))


async def start_experiment(request: web.Request) -> web.Response:
    version = _version(request)
    body = await read_body(request, ExperimentIn, "the experiment is invalid")
    base = f"{request.scheme}://{request.host}"
    experiments = ctx(request).models.experiments
    return json_response(await experiments.start(version, body, base, who(request)), status=201)


async def stop_experiment(request: web.Request) -> web.Response:
    body = await read_body(request, StopIn, "the stop is invalid")
    experiments = ctx(request).models.experiments
    return json_response(await experiments.stop(request.match_info["id"], body, who(request)))


async def list_experiments(request: web.Request) -> web.Response:
    return json_response({"experiments": await ctx(request).models.experiments.list()})


async def get_model(request: web.Request) -> web.Response:
    return json_response(await ctx(request).models.get(_version(request)))


async def list_models(request: web.Request) -> web.Response:
    return json_response({"models": await ctx(request).models.list()})


async def model_file(request: web.Request) -> web.StreamResponse:
    path = ctx(request).models.file_path(_version(request))
    if not await asyncio.to_thread(path.is_file):
        raise NotFound("model file", request.match_info["version"])
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


def _version(request: web.Request) -> int:
    text = request.match_info["version"]
    if not text.isdigit() or len(text) > 9:
        raise ApiProblem(400, "Bad Request", f"version {text[:20]!r} is not a positive integer")
    return int(text)


ROUTES: tuple[Route, ...] = (
    Route(
        "post",
        "/v1/models",
        register_model,
        "Register a model: its signed-to-be manifest and its ONNX file",
        responses={201: "OK"},
        tags=TAGS,
        form={
            "type": "object",
            "required": ["manifest", "model"],
            "properties": {
                "manifest": {
                    "$ref": "#/components/schemas/ModelManifest",
                    "description": "the manifest (a JSON part)",
                },
                "model": {"type": "string", "format": "binary", "maxLength": MAX_MODEL_BYTES},
            },
        },
        models=(ModelManifest,),
        scope="models",
    ),
    Route("get", "/v1/models", list_models, "Registered models", responses={200: "OK"}, tags=TAGS),
    Route(
        "get",
        "/v1/models/{version}",
        get_model,
        "One model: its manifest, rollouts, device health reports and any halt",
        responses={200: "OK"},
        tags=TAGS,
        patterns=VERSION,
    ),
    Route(
        "post",
        "/v1/models/{version}/rollout",
        rollout_model,
        "Roll a model out to a share of a cohort (a signed, retained manifest)",
        body=RolloutIn,
        responses={200: "OK"},
        tags=TAGS,
        patterns=VERSION,
        scope="models",
    ),
    Route(
        "post",
        "/v1/models/{version}/experiment",
        start_experiment,
        "Roll a candidate model out as an experiment against the control (a sequential test"
        " promotes it or rolls it back)",
        body=ExperimentIn,
        responses={201: ExperimentOut},
        tags=TAGS,
        patterns=VERSION,
        scope="models",
    ),
    Route(
        "post",
        "/v1/experiments/{id}/stop",
        stop_experiment,
        "Stop a running experiment by hand: roll the candidate back or promote it now (409 when"
        " the experiment already ended)",
        body=StopIn,
        responses={200: ExperimentOut, 409: "The experiment already ended (its state named)"},
        tags=TAGS,
        patterns=EXPERIMENT,
        scope="models",
    ),
    Route(
        "get",
        "/v1/experiments",
        list_experiments,
        "Model experiments: their arms, state and verdict",
        responses={200: ExperimentList},
        tags=TAGS,
    ),
    Route(
        "get",
        "/v1/models/{version}/model.onnx",
        model_file,
        "A model file (public: devices check it against the signed manifest)",
        responses={200: Answer("OK", media="application/octet-stream")},
        public=True,
        tags=TAGS,
        patterns=VERSION,
    ),
)
