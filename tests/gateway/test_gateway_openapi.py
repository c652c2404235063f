"""`/openapi.json` describes exactly the routes the gateway serves, and the routes marked public
are exactly those served without a token (one route table drives all three)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloud_gateway.api.app import PUBLIC, openapi_json
from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.open import open_backend
from cloud_gateway.runtime.build import Parts, build
from cloud_gateway.security.keys import load_or_create
from protocol.ids import utcnow

PUBLIC_PATHS = {
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/",
    "/static/dashboard.js",
    "/static/form.js",
    "/static/pages.js",
    "/static/sales.js",
    "/static/dashboard.css",
    "/v1/provision",  # a device with its claim credential, not an operator's token
}
SAMPLE = {"{id}": "c-1", "{version}": "7"}


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    """The composition root's parts over a real database; no loop runs, no broker needed."""
    settings = GatewaySettings(broker="mqtt://127.0.0.1:9", data_dir=tmp_path, http_port=0)
    keys = await asyncio.to_thread(load_or_create, settings.data_dir, settings.topic_root)
    backend = await open_backend(settings, utcnow).open()
    try:
        yield build(settings, clock=utcnow, backend=backend, keys=keys)
    finally:
        await backend.close()


def served(parts: Parts) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in parts.http.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def test_the_document_describes_exactly_the_served_routes(parts: Parts) -> None:
    doc = openapi_json()
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served(parts) == described
    rollout = doc["paths"]["/v1/models/{version}/rollout"]["post"]
    assert rollout["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RolloutIn"
    }
    assert "ModelManifest" in doc["components"]["schemas"]
    stop = doc["paths"]["/v1/experiments/{id}/stop"]["post"]
    assert stop["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StopIn"
    }
    assert stop["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExperimentOut"
    }
    assert {"400", "404", "409"} <= set(stop["responses"])
    assert set(doc["components"]["schemas"]["StopIn"]["required"]) == {"outcome", "reason"}
    assert doc["paths"]["/v1/models/{version}/model.onnx"]["get"]["security"] == []
    assert "409" in doc["paths"]["/v1/campaigns"]["post"]["responses"]
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]


def test_the_public_set_is_the_health_checks_the_dashboard_and_model_files() -> None:
    assert PUBLIC.paths == PUBLIC_PATHS
    assert "/v1/models/12/model.onnx" in PUBLIC
    for path in ("/v1/models/x/model.onnx", "/v1/models/12", "/static/x.js", "/v1/devices"):
        assert path not in PUBLIC, path
    doc = openapi_json()
    public_ops = {
        p for p, ops in doc["paths"].items() for op in ops.values() if op.get("security") == []
    }
    assert public_ops == PUBLIC_PATHS | {"/v1/models/{version}/model.onnx"}


async def test_only_public_routes_answer_without_a_token(parts: Parts) -> None:
    async with TestClient(TestServer(parts.http.app)) as http:
        for method, path in sorted(served(parts)):
            url = path
            for param, value in SAMPLE.items():
                url = url.replace(param, value)
            async with http.request(method, url) as r:
                if url in PUBLIC:
                    assert r.status != 401, (method, url)
                else:
                    assert r.status == 401, (method, url, r.status)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get("/healthz") as r:
            assert r.status == 200
        async with http.get("/readyz") as r:  # no loop runs, the link is down
            assert r.status == 503
            assert (await r.json())["checks"]["broker"] == {"ok": False}
        async with http.post("/healthz") as r:  # a public path, a method it does not take
            assert r.status == 405
