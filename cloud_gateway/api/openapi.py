"""`/openapi.json` generated from the pydantic models: every path, its body and its answers.

`ROUTES` lists the operators' API (method, path, summary, request and response models),
`model_routes` the model registry's;
`complete_document` turns it into OpenAPI 3.1 on top of a base document, so routes another
module describes by hand stay in, and ours replace theirs where both describe a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from cloud_gateway.campaigns.model import Campaign, CampaignIn
from cloud_gateway.campaigns.results import CampaignResults

PROBLEM_JSON = "application/problem+json"


class CampaignList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaigns: list[Campaign]


class DeviceOut(BaseModel):
    """A device as the registry knows it."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    status: str
    profile: str | None
    first_seen: str | None
    last_seen: str | None
    agent_version: str | None
    model_version: int | None
    last_seq: int | None
    cohorts: list[str]
    stats: dict[str, Any]
    malformed: int
    batches: int | None = None
    signals_stored: int | None = None
    outcomes_stored: int | None = None
    aggregates_cover: int | None = None


class DeviceList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[DeviceOut]


class DeviceExport(BaseModel):
    """Everything the gateway holds for one device (data subject access)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    registry: DeviceOut
    signals: list[dict[str, Any]]
    aggregates: list[dict[str, Any]]
    outcomes: list[dict[str, Any]]
    outcome_features: list[dict[str, Any]]
    """The model inputs logged with each outcome (`id` is the outcome's)."""
    claims: list[dict[str, Any]]
    grants: list[dict[str, Any]]
    """Coupons granted to the device (code included)."""
    device_pushes: list[dict[str, Any]]
    """Offer bundles addressed to the device, with their send and receipt times."""


class DeviceErased(BaseModel):
    """What an erasure removed at the gateway, and the `forget` command sent to the device.

    `command` is `sent` when it went out now, `queued` when the link is down; either way it
    is re-sent (on each birth, and periodically) until the device confirms it by receipt.
    """

    model_config = ConfigDict(extra="forbid")

    device_id: str
    removed: dict[str, int]
    """Rows deleted per table; `grants_anonymized`: coupons kept for stock, device id removed."""
    command_id: str
    command: str


class GatewayStats(BaseModel):
    """Gateway-wide counters (each an integer), how full the uplink's queues are now, uptime
    and version."""

    model_config = ConfigDict(extra="allow")

    uptime_s: float
    version: str
    rejected: dict[str, int]
    uplink_queued_messages: int | None = None
    """Messages the MQTT client holds for ingest (`max_queued_incoming` at most)."""
    uplink_queued_bytes: int | None = None
    """Their payload bytes (`max_queued_incoming_bytes` at most); past either, `uplink_overflow`."""
    ingest_waiting_batches: int | None = None
    """Batches parsed and waiting for their group commit."""


class Fleet(BaseModel):
    """The fleet at a glance: devices by profile and status, bundles awaiting receipts."""

    model_config = ConfigDict(extra="forbid")

    devices: int
    online: int
    by_profile: dict[str, dict[str, int]]
    bundles_awaiting_receipt: int


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
    who: str
    action: str
    target: str | None
    at: str
    detail: dict[str, Any]


class AuditLog(BaseModel):
    """Every change, newest first: who (token or `scheduler`), what, when."""

    model_config = ConfigDict(extra="forbid")

    entries: list[AuditEntry]


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str
    version: str


class Readiness(BaseModel):
    """`/readyz`: `ready` only while every check is ok (200), else 503 with the same body.
    Checks: `broker` (the MQTT link is up), `database` (a write, rolled back, and a read
    succeed), `loops` (every owned loop runs; `down` names those that do not)."""

    model_config = ConfigDict(extra="forbid")

    ready: bool
    checks: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Route:
    """One operation of the API as the document describes it."""

    method: str
    path: str
    summary: str
    response: type[BaseModel] | str | None = None
    """A model, a media type for non-JSON answers, or None for a free-form object."""
    status: int = 200
    body: type[BaseModel] | None = None
    public: bool = False
    query: tuple[tuple[str, str, dict[str, Any]], ...] = ()
    """(name, description, schema) of query parameters."""
    form: dict[str, Any] | None = None
    """A `multipart/form-data` body: the schema of its parts."""
    models: tuple[type[BaseModel], ...] = ()
    """Models the `form` refers to (put in the components)."""
    path_param: str = "id"
    links: tuple[tuple[str, str], ...] = ()
    """(name, operationId) of operations taking this answer's `id` as their `{id}`."""


ROUTES: tuple[Route, ...] = (
    Route(
        "post",
        "/v1/campaigns",
        "Create a draft campaign",
        Campaign,
        201,
        CampaignIn,
        links=(
            ("GetCampaign", "get_v1_campaigns_id"),
            ("LaunchCampaign", "post_v1_campaigns_id_launch"),
            ("PauseCampaign", "post_v1_campaigns_id_pause"),
            ("EndCampaign", "post_v1_campaigns_id_end"),
            ("CampaignStats", "get_v1_campaigns_id_stats"),
        ),
    ),
    Route("get", "/v1/campaigns", "List campaigns", CampaignList),
    Route("get", "/v1/campaigns/{id}", "One campaign", Campaign),
    Route(
        "post",
        "/v1/campaigns/{id}/launch",
        "Launch (or schedule, before starts_at): push its offers",
        Campaign,
        links=(
            ("PauseCampaign", "post_v1_campaigns_id_pause"),
            ("CampaignStats", "get_v1_campaigns_id_stats"),
        ),
    ),
    Route(
        "post",
        "/v1/campaigns/{id}/pause",
        "Pause: withdraw its offers (signed revocation)",
        Campaign,
        links=(
            ("LaunchCampaign", "post_v1_campaigns_id_launch"),
            ("EndCampaign", "post_v1_campaigns_id_end"),
        ),
    ),
    Route("post", "/v1/campaigns/{id}/end", "End for good: withdraw its offers", Campaign),
    Route(
        "get",
        "/v1/campaigns/{id}/stats",
        "Live results per campaign and variant, with confidence intervals and uplift",
        CampaignResults,
    ),
    Route("get", "/v1/devices", "Device registry", DeviceList),
    Route("get", "/v1/devices/{id}", "One device", DeviceOut),
    Route(
        "delete",
        "/v1/devices/{id}",
        "Erase a device: delete its data here, send it a signed forget command",
        DeviceErased,
        202,
    ),
    Route("get", "/v1/devices/{id}/export", "All the gateway holds for a device", DeviceExport),
    Route("get", "/v1/fleet", "The fleet at a glance", Fleet),
    Route(
        "get",
        "/v1/audit",
        "Audit log: every change, newest first",
        AuditLog,
        query=(
            (
                "limit",
                "entries to return (1..1000, default 100)",
                {"type": "integer", "minimum": 1, "maximum": 1000},
            ),
        ),
    ),
    Route("get", "/v1/stats", "Gateway-wide counters", GatewayStats),
    Route("get", "/metrics", "Prometheus metrics (text format)", "text/plain"),
    Route(
        "get",
        "/healthz",
        "Liveness: the process answers (nothing about the broker or the database)",
        Health,
        public=True,
    ),
    Route(
        "get",
        "/readyz",
        "Readiness: broker link up, database writable, every loop running (else 503)",
        Readiness,
        public=True,
    ),
    Route("get", "/openapi.json", "This document"),
    Route("get", "/", "The dashboard (HTML)", "text/html", public=True),
)


def model_routes() -> tuple[Route, ...]:
    """The model registry's routes (`cloud_gateway.registry.service`), from its request models.

    Imported here, not at the top: the registry imports the API module, which imports this.
    """
    from cloud_gateway.registry.service import RolloutIn  # noqa: PLC0415 - import cycle, see above
    from protocol.envelopes import ModelManifest  # noqa: PLC0415 - kept beside its sibling

    version = "version"
    return (
        Route(
            "post",
            "/v1/models",
            "Register a model: its signed-to-be manifest and its ONNX file",
            None,
            201,
            form={
                "type": "object",
                "required": ["manifest", "model"],
                "properties": {
                    "manifest": {
                        "$ref": "#/components/schemas/ModelManifest",
                        "description": "the manifest (a JSON part)",
                    },
                    "model": {"type": "string", "format": "binary", "maxLength": 16 << 20},
                },
            },
            models=(ModelManifest,),
        ),
        Route("get", "/v1/models", "Registered models"),
        Route(
            "get",
            "/v1/models/{version}",
            "One model: its manifest, rollouts, device health reports and any halt",
            path_param=version,
        ),
        Route(
            "post",
            "/v1/models/{version}/rollout",
            "Roll a model out to a share of a cohort (a signed, retained manifest)",
            None,
            body=RolloutIn,
            path_param=version,
        ),
        Route(
            "get",
            "/v1/models/{version}/model.onnx",
            "A model file (public: devices check it against the signed manifest)",
            "application/octet-stream",
            public=True,
            path_param=version,
        ),
    )


def all_routes() -> tuple[Route, ...]:
    return ROUTES + model_routes()


def _schemas(problem: type[BaseModel]) -> dict[str, Any]:
    models: list[type[BaseModel]] = [problem]
    routes = all_routes()
    for r in routes:
        for m in (r.response, r.body, *r.models):
            if isinstance(m, type) and m not in models:
                models.append(m)
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "validation" if any(r.body is m or m in r.models for r in routes) else "serialization")
        for m in models
    ]
    _, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = defs.get("$defs", {})
    return schemas


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation_id(route: Route) -> str:
    name = route.path.strip("/").replace("/", "_").replace(".", "_") or "index"
    return f"{route.method}_{name}".replace("{", "").replace("}", "")


def _operation(route: Route) -> dict[str, Any]:
    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    if isinstance(route.response, str):
        content: dict[str, Any] = {route.response: {"schema": {"type": "string"}}}
    elif route.response is None:
        content = {"application/json": {"schema": {"type": "object"}}}
    else:
        content = {"application/json": {"schema": _ref(route.response)}}
    ok: dict[str, Any] = {"description": "OK", "content": content}
    if route.links:
        ok["links"] = {
            name: {"operationId": target, "parameters": {"id": "$response.body#/id"}}
            for name, target in route.links
        }
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route),
        "responses": {str(route.status): ok},
    }
    params: list[dict[str, Any]] = []
    if f"{{{route.path_param}}}" in route.path:
        schema: dict[str, Any] = {"type": "string"}
        if route.path_param == "version":
            schema = {"type": "string", "pattern": "^[0-9]{1,9}$"}
            op["responses"]["400"] = {"description": "Invalid version", "content": problem}
        params.append({"name": route.path_param, "in": "path", "required": True, "schema": schema})
        op["responses"]["404"] = {"description": "Not found", "content": problem}
    for name, description, schema in route.query:
        params.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": description,
                "schema": schema,
            }
        )
    if route.query:
        op["responses"]["400"] = {"description": "Invalid parameter", "content": problem}
    if params:
        op["parameters"] = params
    if route.public:
        op["security"] = []
    else:
        op["responses"]["401"] = {
            "description": "Missing or wrong bearer token",
            "content": problem,
        }
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
        op["responses"]["400"] = {"description": "Invalid body", "content": problem}
        op["responses"]["413"] = {"description": "Body too large", "content": problem}
    if route.form is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": route.form}},
        }
        op["responses"]["400"] = {"description": "Invalid body", "content": problem}
        op["responses"]["413"] = {"description": "Body too large", "content": problem}
    if route.path == "/readyz":
        op["responses"]["503"] = {"description": "Not ready", "content": content}
    if route.method == "post" and route.path == "/v1/campaigns":
        op["responses"]["409"] = {"description": "An offer id is taken", "content": problem}
    if route.method == "post" and route.path.endswith(("/launch", "/pause", "/end")):
        op["responses"]["409"] = {"description": "Not allowed in this state", "content": problem}
    return op


def complete_document(base: dict[str, Any], problem: type[BaseModel]) -> dict[str, Any]:
    """`base` with every route of `ROUTES` described from the models."""
    doc = dict(base)
    components = dict(doc.get("components", {}))
    schemas = dict(components.get("schemas", {}))
    schemas.update(_schemas(problem))
    components["schemas"] = schemas
    doc["components"] = components
    paths = {k: dict(v) for k, v in doc.get("paths", {}).items()}
    for route in all_routes():
        paths.setdefault(route.path, {})[route.method] = _operation(route)
    doc["paths"] = paths
    return doc
