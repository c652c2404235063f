"""The operations routes: liveness, readiness, counters, Prometheus metrics, the audit log and
the OpenAPI document."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_gateway import GATEWAY_VERSION
from cloud_gateway.api.context import OPENAPI, ctx, json_response
from cloud_gateway.api.errors import ApiProblem
from cloud_gateway.api.routes import Answer, Route
from cloud_gateway.api.schemas import AuditLog, GatewayStats, Health, Readiness
from cloud_gateway.db.audit import audit_log as audit_rows
from cloud_gateway.db.workers import fleet_figures
from cloud_gateway.ingest.service import REJECT_REASONS, public_counters

TAGS = ("ops",)
MAX_AUDIT = 1000


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP. Says nothing of the broker or the database
    (`/readyz` does): restart a gateway whose /healthz fails, route traffic by /readyz."""
    return json_response({"status": "ok", "version": GATEWAY_VERSION})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 while the broker link is up, the database takes a write and every
    owned loop runs; else 503 naming the failed checks."""
    result = await ctx(request).readiness()
    return json_response(result, status=200 if result["ready"] else 503)


async def gateway_stats(request: web.Request) -> web.Response:
    parts = ctx(request)
    stats = public_counters(parts.counters)
    stats.update(parts.gauges())
    stats.update(await parts.db.call(fleet_figures))  # every worker's, from the database
    stats["uptime_s"] = round(time.monotonic() - parts.started, 3)
    stats["version"] = GATEWAY_VERSION
    return json_response(stats)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(ctx(request).registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


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
    rows = await ctx(request).db.call(audit_rows, limit)
    entries = [{**r, "detail": json.loads(r["detail"]) if r["detail"] else {}} for r in rows]
    return json_response({"entries": entries})


async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


class CountersCollector(Collector):
    """Exposes the gateway's counters at scrape time (no second set of numbers to keep)."""

    def __init__(
        self, counters: Counter[str], started: float, gauges: Callable[[], dict[str, int]]
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
        for name, level in self._gauges().items():
            yield GaugeMetricFamily(f"edgemart_gateway_{name}", f"Gateway level {name}.", level)
        yield GaugeMetricFamily(
            "edgemart_gateway_uptime_seconds",
            "Seconds since the gateway started.",
            value=time.monotonic() - self._started,
        )


ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/healthz",
        healthz,
        "Liveness: the process answers (nothing about the broker or the database)",
        responses={200: Health},
        public=True,
        tags=TAGS,
    ),
    Route(
        "get",
        "/readyz",
        readyz,
        "Readiness: broker link up, database writable, every loop running (else 503)",
        responses={200: Readiness, 503: Answer("Not ready", Readiness)},
        public=True,
        tags=TAGS,
    ),
    Route(
        "get",
        "/openapi.json",
        openapi,
        "This document (public, as PROTOCOL.md says: it carries no data)",
        responses={200: "OK"},
        public=True,
        tags=TAGS,
    ),
    Route(
        "get",
        "/metrics",
        metrics,
        "Prometheus metrics (text format)",
        responses={200: Answer("OK", media="text/plain")},
        tags=TAGS,
    ),
    Route(
        "get",
        "/v1/stats",
        gateway_stats,
        "This worker's counters and queue levels; fleet-wide figures from the database",
        responses={200: GatewayStats},
        tags=TAGS,
    ),
    Route(
        "get",
        "/v1/audit",
        audit_log,
        "Audit log: every change, newest first",
        responses={200: AuditLog},
        tags=TAGS,
        query=(
            (
                "limit",
                f"entries to return (1..{MAX_AUDIT}, default 100)",
                {"type": "integer", "minimum": 1, "maximum": MAX_AUDIT},
            ),
        ),
    ),
)
