"""The operators' HTTP API app: every route table mounted, bearer auth, problem+json errors,
and the server that listens for it."""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from cloud_gateway.api import (
    campaigns,
    dashboard,
    devices,
    gateways,
    households,
    members,
    models,
    ops,
    policies,
    provision,
    social,
    trends,
    waves,
)
from cloud_gateway.api.context import CTX, OPENAPI, TOKEN_ID, ApiContext
from cloud_gateway.api.errors import Problem, problem_response, problems_middleware
from cloud_gateway.api.openapi import document
from cloud_gateway.api.routes import Handler, PublicPaths, Route, mount
from cloud_gateway.errors import GatewayError

TABLES: tuple[tuple[Route, ...], ...] = (
    ops.ROUTES,
    gateways.ROUTES,
    campaigns.ROUTES,
    policies.ROUTES,
    devices.ROUTES,
    households.ROUTES,
    models.ROUTES,
    dashboard.ROUTES,
    provision.ROUTES,
    members.ROUTES,
    waves.ROUTES,
    trends.ROUTES,
    social.ROUTES,
)
"""Every route of the API, one table per route module."""
PUBLIC = PublicPaths.of(TABLES)
"""Paths served without a token: the routes marked `public`."""
SCOPE_OF: dict[tuple[str, str], str] = {
    (route.method.upper(), route.path): route.needs() for table in TABLES for route in table
}
"""(METHOD, route path) -> the scope a token needs for it."""


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC:
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    grant = None
    context = request.app[CTX]
    if scheme.lower() == "bearer" and token.strip():
        grant = await context.verifier.verify(token.strip())
    if grant is None:
        context.counters["api_unauthorized"] += 1
        return problem_response(
            Problem(status=401, title="Unauthorized", detail="a valid bearer token is required"),
            headers={"WWW-Authenticate": 'Bearer realm="edgemart-gateway"'},
        )
    resource = request.match_info.route.resource
    method = "GET" if request.method == "HEAD" else request.method
    needed = SCOPE_OF.get((method, resource.canonical)) if resource is not None else None
    if needed is not None and not grant.allows(needed):
        context.counters["api_forbidden"] += 1
        has = ", ".join(sorted(grant.scopes))
        detail = f"token {grant.id} lacks the {needed!r} scope (it has {has})"
        return problem_response(Problem(status=403, title="Forbidden", detail=detail))
    request[TOKEN_ID] = grant.id
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
