"""The route table type: one `Route` per operation drives aiohttp, OpenAPI and the public paths.

Each route module (`campaigns`, `devices`, `models`, `ops`, `dashboard`) exports a tuple of
`Route`s; `mount` registers them on the app, `api/openapi.py` describes them, and
`PublicPaths` (no bearer token) is derived from their `public` flag. Nothing lists a route twice.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Answer:
    """One documented answer: a description and what its body is.

    `model` None means a problem document for an error status, a free-form JSON object
    otherwise; `media` other than JSON means a non-JSON body (a string)."""

    description: str
    model: type[BaseModel] | None = None
    media: str = JSON


Reply = type[BaseModel] | str | Answer
"""In `Route.responses`: a model (its JSON; "OK"), a description (a problem document for an
error status, a free-form object for a success) or an `Answer`."""


@dataclass(frozen=True, slots=True)
class Route:
    """One operation of the operators' API: what aiohttp serves and what the document says.

    Answers every route has by construction are not listed: 401, 503 and 507 (the store
    cannot be used now, its disk is full: both with `Retry-After`) unless `public`, 404 for a
    path with a parameter, 400 for a parameter with a pattern or a query, 400 and 413 for a
    body. `responses` lists the success answer and any answer particular to the route."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    """The JSON request body, validated by this model."""
    responses: Mapping[int, Reply] = field(default_factory=dict)
    public: bool = False
    """Served without a bearer token."""
    tags: tuple[str, ...] = ()
    patterns: Mapping[str, str] = field(default_factory=dict)
    """Path parameter -> the regular expression a valid value matches (else 400)."""
    query: tuple[tuple[str, str, dict[str, Any]], ...] = ()
    """(name, description, schema) of query parameters."""
    form: dict[str, Any] | None = None
    """A `multipart/form-data` body: the schema of its parts."""
    models: tuple[type[BaseModel], ...] = ()
    """Models the `form` refers to (put in the components)."""
    links: tuple[tuple[str, str], ...] = ()
    """(name, operationId) of operations taking this answer's `id` as their `{id}`."""
    scope: str = ""
    """The token scope a caller needs (`security.auth.SCOPES`); "" is `read-only` for a GET
    and `admin` for anything else. `admin` tokens may call every route."""

    def needs(self) -> str:
        """The scope this route asks of a token."""
        return self.scope or ("read-only" if self.method == "get" else "admin")

    def params(self) -> list[str]:
        """The path parameters, in order."""
        return re.findall(r"\{(\w+)\}", self.path)


def mount(app: web.Application, tables: Iterable[tuple[Route, ...]]) -> None:
    """Register every route of `tables` on `app` (a GET answers HEAD too, as aiohttp's
    `add_get` does)."""
    for table in tables:
        for route in table:
            if route.method == "get":
                app.router.add_get(route.path, route.handler)
            else:
                app.router.add_route(route.method.upper(), route.path, route.handler)


@dataclass(frozen=True, slots=True)
class PublicPaths:
    """The request paths served without a token, from the routes marked `public`."""

    paths: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def of(cls, tables: Iterable[tuple[Route, ...]]) -> PublicPaths:
        routes = [r for table in tables for r in table if r.public]
        paths = frozenset(r.path for r in routes if not r.params())
        patterns = tuple(_path_regex(r) for r in routes if r.params())
        return cls(paths, patterns)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        return path in self.paths or any(p.fullmatch(path) for p in self.patterns)


def _path_regex(route: Route) -> re.Pattern[str]:
    """`/v1/models/{version}/model.onnx` as a regex: each parameter matches its pattern (or
    one path segment)."""
    parts = re.split(r"\{(\w+)\}", route.path)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?:{route.patterns.get(part, '[^/]+')})"
        for i, part in enumerate(parts)
    )
    return re.compile(regex)
