"""The worker registry route: `GET /v1/gateways`, the live gateway workers on this database
and the leases each holds (any worker answers: the registry is in the shared database)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from cloud_gateway.api.context import ctx, json_response
from cloud_gateway.api.routes import Route
from cloud_gateway.db.workers import LIVE_WITHIN_S, live_workers


class GatewayWorker(BaseModel):
    """One live worker: seen within three heartbeats."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """host-pid-random, unique per process."""
    host: str
    pid: int
    started_at: str
    last_seen: str
    http_port: int | None
    version: str
    leases: list[str]
    """The leases it holds (`gateway-once`: it runs the scheduler and the owed re-sends)."""


class GatewayWorkers(BaseModel):
    """The live workers, oldest first."""

    model_config = ConfigDict(extra="forbid")

    workers: list[GatewayWorker]
    live_within_s: float


async def gateways(request: web.Request) -> web.Response:
    rows = await ctx(request).db.call(live_workers, LIVE_WITHIN_S)
    return json_response({"workers": rows, "live_within_s": LIVE_WITHIN_S})


ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/v1/gateways",
        gateways,
        "The live gateway workers on this database and the leases each holds",
        responses={200: GatewayWorkers},
        tags=("ops",),
    ),
)
