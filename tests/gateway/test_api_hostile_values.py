"""Issue 13, hostile values through the operators' API (hypothesis): campaign and rollout
bodies with `NaN`, infinities, overflowing and huge numbers, times at and past the calendar's
edges with any offset, and odd Unicode, at any field. Never a 5xx; a body the API took is
stored and served back as JSON; the gateway stays ready. On both backends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from simulators.brokers import MosquittoProcess
from tests.support.builders import CAMPAIGN_OFFER
from tests.support.gateway_world import gateway_settings

EDGE_TIMES = (
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T10:00:00+14:00",
    "2026-12-06T06:00:00+23:59",
    "2026-12-06T06:00:00",
    "2026-13-01T00:00:00Z",
)
LITERALS = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 30, "1e-400", "-0")
hostile = (
    st.sampled_from(EDGE_TIMES)
    | st.sampled_from([f"@{lit}@" for lit in LITERALS])  # raw JSON literals, placed below
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "\u202e", "\x00", "𝕏" * 130, "\ufeff"])
    | st.none()
    | st.booleans()
)
PLACES = (
    "name",
    "starts_at",
    "ends_at",
    "holdout",
    "priority",
    "variants.a",
    "caps.per_day",
    "offers.0.price",
    "offers.0.discount",
    "offers.0.stock",
    "offers.0.starts_at",
    "offers.0.expires_at",
    "offers.0.title",
    "offers.0.caps.per_day",
    "targeting.member_tiers.0",
    "targeting.rules",
)


def _encode(doc: dict[str, Any]) -> str:
    """JSON text with the `@literal@` markers put in as raw literals (`NaN`, `1e400`, ...)."""
    text = json.dumps(doc)  # lone surrogates escaped as JSON writes them
    for lit in LITERALS:
        text = text.replace(json.dumps(f"@{lit}@"), lit)
    return text


@st.composite
def campaign_bodies(draw: st.DrawFn) -> str:
    doc: dict[str, Any] = {
        "name": "fuzz",
        "cohorts": ["all"],
        "offers": [{**CAMPAIGN_OFFER, "limited": True, "stock": 3, "caps": {}}],
        "variants": {"a": 1},
        "caps": {},
        "targeting": {"member_tiers": [1], "rules": []},
    }
    for place in draw(st.lists(st.sampled_from(PLACES), min_size=1, max_size=3)):
        *parents, leaf = place.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if isinstance(node, list):
            node[int(leaf)] = draw(hostile)
        else:
            node[leaf] = draw(hostile)
    return _encode(doc)


class Api:
    """A running gateway in its own event loop, driven from a synchronous hypothesis test:
    the loop (and so the gateway) runs while a request is made."""

    def __init__(self, tmp_path: Path, broker: MosquittoProcess, db: str | None) -> None:
        self.runner = asyncio.Runner()
        self.settings = gateway_settings(tmp_path, broker, db=db)
        self.gw = Gateway(self.settings)
        self.runner.run(self.gw.__aenter__())
        token = create_token(self.settings.data_dir, db=self.settings.db)
        self.http = self.runner.run(self._session(token))

    async def _session(self, token: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            f"http://127.0.0.1:{self.gw.http_port}",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            async with self.http.request(method, path, data=body) as resp:
                return resp.status, await resp.text()

        return self.runner.run(go())

    def close(self) -> None:
        self.runner.run(self.http.close())
        self.runner.run(self.gw.__aexit__(None, None, None))
        self.runner.close()


@pytest.fixture
def api(tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None) -> Iterator[Api]:
    running = Api(tmp_path, mosquitto, gateway_db)
    yield running
    running.close()


def _strict(text: str) -> Any:
    def refuse(literal: str) -> None:
        raise AssertionError(f"{literal} in an answer: not JSON")

    return json.loads(text, parse_constant=refuse)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=campaign_bodies())
def test_hostile_campaign_bodies_are_taken_or_refused_never_a_5xx(api: Api, body: str) -> None:
    status, text = api.call("POST", "/v1/campaigns", body)
    event(f"campaign answered {status}")
    assert status in (201, 400), (status, text, body)
    answer = _strict(text)
    if status == 400:
        assert answer["title"] == "Bad Request"
        return
    cid = answer["id"]
    for method, path in (
        ("POST", f"/v1/campaigns/{cid}/launch"),
        ("GET", f"/v1/campaigns/{cid}/stats"),
        ("POST", f"/v1/campaigns/{cid}/pause"),
        ("GET", f"/v1/campaigns/{cid}"),
    ):
        status, text = api.call(method, path)
        assert status < 500, (method, path, status, text, body)
        _strict(text)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=hostile, field=st.sampled_from(["percent", "cohort"]))
def test_hostile_rollout_bodies_are_refused_never_a_5xx(api: Api, value: Any, field: str) -> None:
    body = _encode({"cohort": "all", "percent": 10, field: value})
    status, text = api.call("POST", "/v1/models/1/rollout", body)
    assert status in (400, 404), (status, text, body)  # no model 1 here: 404 when valid
    _strict(text)


def test_the_gateway_is_ready_after_the_fuzzing(api: Api) -> None:
    status, text = api.call("GET", "/readyz")
    assert status == 200, text
