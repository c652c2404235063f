"""The operators' HTTP API: bearer auth, problem+json errors, campaigns, devices, stats."""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ValidationError

from cloud_gateway import GATEWAY_VERSION
from cloud_gateway.api.openapi import complete_document
from cloud_gateway.campaigns.model import CampaignIn
from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.db.audit import audit_log as audit_rows
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.db.devices import export_device as export_rows
from cloud_gateway.db.devices import fleet_summary
from cloud_gateway.db.devices import get_device as device_row
from cloud_gateway.db.devices import list_devices as device_rows
from cloud_gateway.devices.erasure import DeviceErasure
from cloud_gateway.errors import (
    Conflict,
    GatewayError,
    InvalidInput,
    InvalidTransition,
    LinkDown,
    NotFound,
)
from cloud_gateway.ingest.service import REJECT_REASONS, public_counters
from cloud_gateway.security.auth import TokenVerifier
from protocol.codec import field_errors
from protocol.topics import DEVICE_ID_RE

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/", "/static/dashboard.js", "/static/dashboard.css"}
)
PUBLIC_PATTERNS: tuple[re.Pattern[str], ...] = (re.compile(r"^/v1/models/[0-9]{1,9}/model\.onnx$"),)
"""Served without a token: model files, which devices check against the signed manifest."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ApiContext:
    campaigns: CampaignService
    db: Backend[Session]
    verifier: TokenVerifier
    counters: Counter[str]
    registry: CollectorRegistry
    started: float
    erasure: DeviceErasure | None = None
    gauges: Callable[[], dict[str, int]] | None = None
    """Levels read at request time (queue fill), shown beside the counters."""
    readiness: Callable[[], Awaitable[dict[str, Any]]] | None = None
    """`/readyz`'s checks (broker link, database writable, loops running)."""


CTX = web.AppKey("ctx", ApiContext)
TOKEN_ID = web.RequestKey("token_id", str)


class Problem(BaseModel):
    """RFC 9457 problem details, as every error of this API is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: list[dict[str, str]] | None = None


class ApiProblem(Exception):
    """Raised by handlers to answer with a problem document."""

    def __init__(
        self, status: int, title: str, detail: str = "", errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail or title)
        self.problem = Problem(status=status, title=title, detail=detail, errors=errors)


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        text=problem.model_dump_json(exclude_none=True),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into `application/problem+json`; the process never leaks a traceback."""
    try:
        return await handler(request)
    except ApiProblem as exc:
        return problem_response(exc.problem)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(
            Problem(status=exc.status, title=exc.reason, detail=exc.text or ""),
            headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow",)},
        )
    except HttpProcessingError as exc:
        # A malformed body part (multipart headers, chunking) met while a handler reads it:
        # the client's fault, answered like aiohttp answers a malformed request line.
        if not 400 <= exc.code < 500:
            raise
        return problem_response(
            Problem(status=exc.code, title="Bad Request", detail=exc.message[:200])
        )
    except NotFound as exc:
        return problem_response(Problem(status=404, title="Not Found", detail=str(exc)))
    except InvalidInput as exc:
        return problem_response(
            Problem(status=400, title="Bad Request", detail=str(exc), errors=exc.errors)
        )
    except InvalidTransition as exc:
        return problem_response(Problem(status=409, title="Conflict", detail=str(exc)))
    except Conflict as exc:
        errors = [{"loc": exc.field, "msg": str(exc)}] if exc.field else None
        return problem_response(
            Problem(status=409, title="Conflict", detail=str(exc), errors=errors)
        )
    except LinkDown as exc:
        return problem_response(Problem(status=503, title="Service Unavailable", detail=str(exc)))
    except GatewayError as exc:
        log.exception("request %s %s failed", request.method, request.path)
        return problem_response(Problem(status=500, title="Internal Server Error", detail=str(exc)))
    except Exception:
        # A bug, not the client's fault: logged with its traceback, answered without it.
        log.exception("request %s %s failed", request.method, request.path)
        return problem_response(Problem(status=500, title="Internal Server Error"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or any(p.match(request.path) for p in PUBLIC_PATTERNS):
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token_id = None
    if scheme.lower() == "bearer" and token.strip():
        token_id = await request.app[CTX].verifier.verify(token.strip())
    if token_id is None:
        return problem_response(
            Problem(status=401, title="Unauthorized", detail="a valid bearer token is required"),
            headers={"WWW-Authenticate": 'Bearer realm="edgemart-gateway"'},
        )
    request[TOKEN_ID] = token_id
    return await handler(request)


def _who(request: web.Request) -> str:
    return f"token:{request[TOKEN_ID]}"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def _body(request: web.Request) -> Any:
    raw = await request.read()  # aiohttp enforces client_max_size: 413 past it
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiProblem(400, "Bad Request", f"the body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise ApiProblem(400, "Bad Request", "the body nests too deeply") from exc


# ---------------------------------------------------------------- handlers


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP. Says nothing of the broker or the database
    (`/readyz` does): restart a gateway whose /healthz fails, route traffic by /readyz."""
    return _json({"status": "ok", "version": GATEWAY_VERSION})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 while the broker link is up, the database takes a write and every
    owned loop runs; else 503 naming the failed checks."""
    readiness = request.app[CTX].readiness
    if readiness is None:
        return _json({"ready": False, "checks": {}}, status=503)
    result = await readiness()
    return _json(result, status=200 if result["ready"] else 503)


async def create_campaign(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        spec = CampaignIn.model_validate(body)
    except ValidationError as exc:
        raise ApiProblem(
            400, "Bad Request", "the campaign is invalid", errors=field_errors(exc)
        ) from exc
    campaign = await request.app[CTX].campaigns.create(spec, _who(request))
    return _json(campaign.doc(), status=201)


async def list_campaigns(request: web.Request) -> web.Response:
    campaigns = await request.app[CTX].campaigns.list()
    return _json({"campaigns": [c.doc() for c in campaigns]})


async def get_campaign(request: web.Request) -> web.Response:
    campaign = await request.app[CTX].campaigns.get(request.match_info["id"])
    return _json(campaign.doc())


async def launch_campaign(request: web.Request) -> web.Response:
    campaign = await request.app[CTX].campaigns.launch(request.match_info["id"], _who(request))
    return _json(campaign.doc())


async def pause_campaign(request: web.Request) -> web.Response:
    campaign = await request.app[CTX].campaigns.pause(request.match_info["id"], _who(request))
    return _json(campaign.doc())


async def campaign_stats(request: web.Request) -> web.Response:
    stats = await request.app[CTX].campaigns.stats(request.match_info["id"])
    return _json(stats.model_dump(mode="json"))


async def list_devices(request: web.Request) -> web.Response:
    devices = await request.app[CTX].db.call(device_rows)
    return _json({"devices": devices})


async def get_device(request: web.Request) -> web.Response:
    device_id = request.match_info["id"]
    device = await request.app[CTX].db.call(device_row, device_id)
    if device is None:
        raise NotFound("device", device_id)
    return _json(device)


async def erase_device(request: web.Request) -> web.Response:
    """Erasure (DESIGN.md guarantee 4): 202 with what was removed; the device forgets next."""
    device_id = request.match_info["id"]
    erasure = request.app[CTX].erasure
    if erasure is None:
        raise ApiProblem(503, "Service Unavailable", "erasure is not wired in this gateway")
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise NotFound("device", device_id)
    result = await erasure.erase(device_id, _who(request))
    if result is None:
        raise NotFound("device", device_id)
    return _json(result, status=202)


async def export_device(request: web.Request) -> web.Response:
    device_id = request.match_info["id"]
    export = await request.app[CTX].db.call(export_rows, device_id)
    if export is None:
        raise NotFound("device", device_id)
    return _json(export)


async def gateway_stats(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    stats = public_counters(ctx.counters)
    if ctx.gauges is not None:
        stats.update(ctx.gauges())
    stats["uptime_s"] = round(time.monotonic() - ctx.started, 3)
    stats["version"] = GATEWAY_VERSION
    return _json(stats)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[CTX].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_json())


# ---------------------------------------------------------------- metrics and schema


class CountersCollector(Collector):
    """Exposes the gateway's counters at scrape time (no second set of numbers to keep)."""

    def __init__(
        self,
        counters: Counter[str],
        started: float,
        gauges: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self._counters = counters
        self._started = started
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        stats = public_counters(self._counters)
        for name, value in stats.items():
            if isinstance(value, int):
                yield CounterMetricFamily(
                    f"edgemart_gateway_{name}", f"Gateway counter {name}.", value=value
                )
        rejected = CounterMetricFamily(
            "edgemart_gateway_rejected", "Uplink messages refused, by reason.", labels=["reason"]
        )
        for reason in REJECT_REASONS:
            rejected.add_metric([reason], self._counters[f"rejected_{reason}"])
        yield rejected
        for name, level in (self._gauges() if self._gauges is not None else {}).items():
            yield GaugeMetricFamily(f"edgemart_gateway_{name}", f"Gateway level {name}.", level)
        yield GaugeMetricFamily(
            "edgemart_gateway_uptime_seconds",
            "Seconds since the gateway started.",
            value=time.monotonic() - self._started,
        )


def openapi_base() -> dict[str, Any]:
    """What the document says beyond its routes (`api/openapi.py` adds every route)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edgemart gateway", "version": GATEWAY_VERSION},
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


@functools.cache
def openapi_json() -> dict[str, Any]:
    """The whole document, built once on first use (the model registry's routes need that
    module, which imports this one)."""
    return complete_document(openapi_base(), Problem)


def build_app(ctx: ApiContext, max_body: int) -> web.Application:
    app = web.Application(
        middlewares=[problems_middleware, auth_middleware], client_max_size=max_body
    )
    app[CTX] = ctx
    ctx.registry.register(CountersCollector(ctx.counters, ctx.started, ctx.gauges))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/stats", gateway_stats)
    app.router.add_post("/v1/campaigns", create_campaign)
    app.router.add_get("/v1/campaigns", list_campaigns)
    app.router.add_get("/v1/campaigns/{id}", get_campaign)
    app.router.add_post("/v1/campaigns/{id}/launch", launch_campaign)
    app.router.add_post("/v1/campaigns/{id}/pause", pause_campaign)
    app.router.add_get("/v1/campaigns/{id}/stats", campaign_stats)
    app.router.add_get("/v1/devices", list_devices)
    app.router.add_get("/v1/devices/{id}", get_device)
    app.router.add_delete("/v1/devices/{id}", erase_device)
    app.router.add_get("/v1/devices/{id}/export", export_device)
    add_campaign_ops_routes(app)
    return app


# ---------------------------------------------------------------- campaign operations, dashboard

STATIC = Path(__file__).resolve().parent / "static"
MAX_AUDIT = 1000


async def end_campaign(request: web.Request) -> web.Response:
    campaign = await request.app[CTX].campaigns.end(request.match_info["id"], _who(request))
    return _json(campaign.doc())


async def fleet(request: web.Request) -> web.Response:
    return _json(await request.app[CTX].db.call(fleet_summary))


async def audit_log(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "100")
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_AUDIT:
        raise ApiProblem(
            400,
            "Bad Request",
            f"limit must be an integer in 1..{MAX_AUDIT}",
            errors=[{"loc": "query.limit", "msg": f"got {raw[:40]!r}"}],
        )
    rows = await request.app[CTX].db.call(audit_rows, limit)
    entries = [{**r, "detail": json.loads(r["detail"]) if r["detail"] else {}} for r in rows]
    return _json({"entries": entries})


async def dashboard(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def dashboard_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ("dashboard.js", "dashboard.css"):
        raise NotFound("file", name)
    return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})


def add_campaign_ops_routes(app: web.Application) -> None:
    """Issue 6: ending campaigns, the fleet, the audit log and the dashboard."""
    app.router.add_post("/v1/campaigns/{id}/end", end_campaign)
    app.router.add_get("/v1/fleet", fleet)
    app.router.add_get("/v1/audit", audit_log)
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{name}", dashboard_asset)
