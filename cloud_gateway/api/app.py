"""The operators' HTTP API app: every route table mounted, bearer auth, problem+json errors,
and the server that listens for it."""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from cloud_gateway.api import campaigns, dashboard, devices, gateways, models, ops
from cloud_gateway.api.context import CTX, OPENAPI, TOKEN_ID, ApiContext
from cloud_gateway.api.errors import Problem, problem_response, problems_middleware
from cloud_gateway.api.openapi import document
from cloud_gateway.api.routes import Handler, PublicPaths, Route, mount
from cloud_gateway.errors import GatewayError

TABLES: tuple[tuple[Route, ...], ...] = (
    ops.ROUTES,
    gateways.ROUTES,
    campaigns.ROUTES,
    devices.ROUTES,
    models.ROUTES,
    dashboard.ROUTES,
)
"""Every route of the API, one table per route module."""
PUBLIC = PublicPaths.of(TABLES)
"""Paths served without a token: the routes marked `public`."""


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC:
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


@functools.cache
def openapi_json() -> dict[str, Any]:
    """The whole document, generated once from the route tables."""
    return document(TABLES)


def build_app(ctx: ApiContext, max_body: int) -> web.Application:
    """The app serving every route of `TABLES` over `ctx`'s parts (not started)."""
    app = web.Application(
        middlewares=[problems_middleware, auth_middleware], client_max_size=max_body
    )
    app[CTX] = ctx
    app[OPENAPI] = openapi_json()
    ctx.registry.register(ops.CountersCollector(ctx.counters, ctx.started, ctx.gauges))
    mount(app, TABLES)
    return app


class HttpServer:
    """The API's listening socket: `await start(host, port)` returns the bound port."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> int:
        runner = web.AppRunner(self.app, access_log=None)
        self._runner = runner
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        addresses = runner.addresses
        if not addresses:
            raise GatewayError("the HTTP server has no listening socket")
        bound: int = addresses[0][1]
        return bound

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
