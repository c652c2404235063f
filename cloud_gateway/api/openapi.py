"""`/openapi.json` generated from the route tables and the pydantic models: every path, its
body and its answers, nothing kept by hand."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from cloud_gateway import GATEWAY_VERSION
from cloud_gateway.api.errors import PROBLEM_JSON, Problem
from cloud_gateway.api.routes import JSON, Answer, Reply, Route

PROBLEM = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def document(tables: Iterable[tuple[Route, ...]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of `tables`."""
    routes = [r for table in tables for r in table]
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edgemart gateway", "version": GATEWAY_VERSION},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(routes),
        },
        "paths": paths,
    }


def _answer(status: int, reply: Reply) -> Answer:
    if isinstance(reply, Answer):
        return reply
    if isinstance(reply, str):
        return Answer(reply)
    return Answer("OK" if status < 400 else reply.__name__, reply)


def _schemas(routes: list[Route]) -> dict[str, Any]:
    """Components: the request models (validation mode), the answers (serialization mode)."""
    requests: list[type[BaseModel]] = []
    for r in routes:
        for m in (r.body, *r.models):
            if m is not None and m not in requests:
                requests.append(m)
    answers: list[type[BaseModel]] = [Problem]
    for r in routes:
        for status, reply in r.responses.items():
            m = _answer(status, reply).model
            if m is not None and m not in answers and m not in requests:
                answers.append(m)
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "serialization") for m in answers),
        *((m, "validation") for m in requests),
    ]
    _, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = defs.get("$defs", {})
    return schemas


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def operation_id(route: Route) -> str:
    name = route.path.strip("/").replace("/", "_").replace(".", "_") or "index"
    return f"{route.method}_{name}".replace("{", "").replace("}", "")


def _content(status: int, answer: Answer) -> dict[str, Any]:
    if answer.media != JSON:
        return {answer.media: {"schema": {"type": "string"}}}
    if answer.model is not None:
        return {JSON: {"schema": _ref(answer.model)}}
    if status >= 400:
        return PROBLEM
    return {JSON: {"schema": {"type": "object"}}}


def _responses(route: Route) -> dict[str, Any]:
    """The route's own answers, then those every route of its kind has."""
    out: dict[str, Any] = {}
    for status, reply in route.responses.items():
        answer = _answer(status, reply)
        entry: dict[str, Any] = {
            "description": answer.description,
            "content": _content(status, answer),
        }
        if status < 300 and route.links:
            entry["links"] = {
                name: {"operationId": target, "parameters": {"id": "$response.body#/id"}}
                for name, target in route.links
            }
        out[str(status)] = entry
    derived: dict[str, str] = {}
    if route.patterns:
        derived["400"] = f"Invalid {', '.join(route.patterns)}"
    if route.params():
        derived["404"] = "Not found"
    if route.query:
        derived["400"] = "Invalid parameter"
    if not route.public:
        derived["401"] = "Missing, wrong, expired or revoked bearer token"
        derived["403"] = f"The token lacks the {route.needs()!r} scope (or admin)"
        # Every route behind a token reads the store (the token is checked there).
        derived["503"] = "The store cannot be used now (I/O error): try again after Retry-After"
        derived["507"] = "The store's disk is full: try again after Retry-After"
    if route.body is not None or route.form is not None:
        derived["400"] = "Invalid body"
        derived["413"] = "Body too large"
    for status_text, description in derived.items():
        out.setdefault(status_text, {"description": description, "content": PROBLEM})
    return out


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": operation_id(route),
        "responses": _responses(route),
    }
    if route.tags:
        op["tags"] = list(route.tags)
    params: list[dict[str, Any]] = []
    for name in route.params():
        schema: dict[str, Any] = {"type": "string"}
        if name in route.patterns:
            schema["pattern"] = f"^{route.patterns[name]}$"
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
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
    if params:
        op["parameters"] = params
    if route.public:
        op["security"] = []
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": _ref(route.body)}},
        }
    if route.form is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": route.form}},
        }
    return op
