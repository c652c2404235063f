"""`/openapi.json` describes every route the gateway serves, the model registry's included."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from prometheus_client import CollectorRegistry

from cloud_gateway.api.app import ApiContext, build_app, openapi_json
from cloud_gateway.api.models import add_model_routes


def test_every_route_is_in_the_document() -> None:
    unused = cast(Any, None)  # listing the routes touches none of the services
    ctx = ApiContext(
        campaigns=unused,
        db=unused,
        verifier=unused,
        counters=Counter(),
        registry=CollectorRegistry(),
        started=0.0,
    )
    app = build_app(ctx, 1 << 20)
    add_model_routes(app, cast(Any, None))
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "*")
    }
    doc = openapi_json()
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    static = {(m, p) for m, p in served if p.startswith("/static")}
    assert served - static <= described, sorted(served - static - described)
    rollout = doc["paths"]["/v1/models/{version}/rollout"]["post"]
    assert rollout["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RolloutIn"
    }
    assert "ModelManifest" in doc["components"]["schemas"]
    assert doc["paths"]["/v1/models/{version}/model.onnx"]["get"]["security"] == []
    assert "409" in doc["paths"]["/v1/campaigns"]["post"]["responses"]
