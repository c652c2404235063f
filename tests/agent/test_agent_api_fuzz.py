"""Hostile input on the device-local API: hypothesis throws generated requests at a real
`edgemart agent run` process over loopback HTTP. Every answer is a 2xx or a 4xx with the
documented error body (`{"errors": [{"loc", "msg"}]}`), never a 5xx; each refusal is counted
in `api_rejected`; and afterwards the agent still takes a good signal."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.api.owners import read_admin_token
from protocol import codec
from protocol.envelopes import TrustFile
from protocol.signing import Signer
from simulators.brokers import MosquittoProcess, free_port
from tests.support.processes import spawn, stop, wait_healthy

pytestmark = pytest.mark.integration

Request = tuple[str, str, bytes | None]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
names = st.sampled_from(["app_open", "content_view", "search", "purchase"]) | st.text(max_size=70)
times = st.sampled_from(["2026-12-02T08:00:00Z", "2026-12-02T08:00:00", "yesterday"]) | st.text()
signal = st.fixed_dictionaries(
    {"kind": names},
    optional={
        "at": times,
        "attrs": st.dictionaries(names, scalars | json_values, max_size=40),
        "extra": json_values,
    },
)
near_valid = {
    "/v1/signals": st.fixed_dictionaries({"signals": st.lists(signal, max_size=120)}),
    "/v1/outcomes": st.fixed_dictionaries(
        {},
        optional={
            "offer_id": st.text(max_size=70),
            "kind": st.sampled_from(["impression", "click", "dismiss", "conversion", "x"]),
            "surface": names,
        },
    ),
    "/v1/consent": st.fixed_dictionaries(
        {"purposes": st.dictionaries(names, scalars | json_values, max_size=5)}
    ),
    "/v1/claims": st.fixed_dictionaries({}, optional={"offer_id": scalars, "x": scalars}),
}


def _bodies(path: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        near_valid[path].map(lambda doc: json.dumps(doc).encode()),
        json_values.map(lambda doc: json.dumps(doc).encode()),
        st.binary(max_size=300),
        st.integers(9_000, 70_000).map(lambda n: b'{"signals": [' + b" " * n + b"]}"),
    )


queries = st.dictionaries(
    st.sampled_from(["surface", "limit", "explain", "x"]),
    st.sampled_from(["tv_home_banner", "3", "0", "99", "\u00b2", "\u0663", "true"]) | st.text(),
    max_size=3,
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from(["body", "offers", "claim", "read"]))
    if kind == "body":
        method, path = draw(
            st.sampled_from(
                [
                    ("POST", "/v1/signals"),
                    ("POST", "/v1/outcomes"),
                    ("PUT", "/v1/consent"),
                    ("POST", "/v1/claims"),
                ]
            )
        )
        return method, path, draw(_bodies(path))
    if kind == "offers":
        return "GET", "/v1/offers?" + urllib.parse.urlencode(draw(queries)), None
    if kind == "claim":
        return "GET", "/v1/claims/" + urllib.parse.quote(draw(st.text(min_size=1)), safe=""), None
    return "GET", draw(st.sampled_from(["/v1/status", "/v1/consent", "/healthz"])), None


class Api(NamedTuple):
    """Where the agent's local API answers, and its admin token."""

    base: str
    token: str


def _call(api: Api, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    headers["Authorization"] = f"Bearer {api.token}"
    req = urllib.request.Request(api.base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _rejected(api: Api) -> int:
    status, body = _call(api, "GET", "/v1/status")
    assert status == 200
    return int(json.loads(body)["counters"].get("api_rejected", 0))


@pytest.fixture(scope="module")
def local_api(
    mosquitto: MosquittoProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("agent-fuzz")
    trust = tmp / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[Signer.generate("k1").public])))
    port, log = free_port(), tmp / "agent.log"
    proc = spawn(
        [
            *("agent", "run", "--profile", "tv", "--device-id", "tv-fuzz-0001"),
            *("--broker", mosquitto.url, "--data-dir", str(tmp / "dev")),
            *("--api-port", str(port), "--trust", str(trust)),
        ],
        log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_healthy(f"{base}/healthz", proc, log))
        yield Api(base, read_admin_token(tmp / "dev"))
        assert proc.poll() is None, "the agent died under fuzzing"
    finally:
        stop(proc)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_no_request_gets_a_server_error_and_every_refusal_is_counted(
    local_api: Api, request: Request
) -> None:
    method, path, body = request
    before = _rejected(local_api)
    status, raw = _call(local_api, method, path, body)
    assert status < 500, (status, raw[:500])
    refused = 400 <= status < 500
    if refused:
        errors = json.loads(raw)["errors"]
        assert errors, raw[:500]
        assert all(isinstance(e["loc"], str) and isinstance(e["msg"], str) for e in errors)
    assert _rejected(local_api) - before == int(refused), (status, raw[:300])


def test_the_agent_still_takes_a_good_signal_afterwards(local_api: Api) -> None:
    body: dict[str, Any] = {"signals": [{"kind": "app_open", "attrs": {"app": "tv"}}]}
    status, raw = _call(local_api, "POST", "/v1/signals", json.dumps(body).encode())
    assert status == 202, raw
    assert json.loads(raw)["accepted"] == 1
