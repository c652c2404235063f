"""The agent's own HTTP (agent/http): served and spoken over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.http.client import ClientError, HttpClient
from agent.http.server import (
    Handler,
    HTTPError,
    HttpServer,
    Request,
    Response,
    delete,
    get,
    json_response,
    post,
)


async def _echo(request: Request) -> Response:
    return json_response(
        {
            "method": request.method,
            "route": request.route,
            "match": request.match_info,
            "query": request.query,
            "body": (await request.read()).decode(),
            "type": request.content_type,
            "tag": request.state.get("tag"),
        }
    )


async def _parsed(request: Request) -> Response:
    """A handler that reads the body as an attribute and as JSON, not through `read()`."""
    return json_response({"size": len(request.body), "json": await request.json()})


async def _boom(request: Request) -> Response:
    raise RuntimeError("a bug in a handler")


async def _teapot(request: Request) -> Response:
    raise HTTPError(409, "not the coordinator")


async def _slow(request: Request) -> Response:
    await asyncio.sleep(5)
    return json_response({})


async def _tag(request: Request, handler: Handler) -> Response:
    request.state["tag"] = "outer"
    response = await handler(request)
    response.headers["X-Seen"] = "yes"
    return response


@pytest.fixture
async def served() -> AsyncIterator[tuple[HttpServer, str]]:
    server = HttpServer(
        [
            get("/v1/items/{item_id}", _echo),
            delete("/v1/items/{item_id}", _echo),
            post("/v1/items", _echo),
            post("/v1/parsed", _parsed),
            get("/boom", _boom),
            get("/conflict", _teapot),
            get("/slow", _slow),
        ],
        [_tag],
        max_body=1000,
        max_connections=4,
    )
    port = await server.listen_tcp("127.0.0.1", 0)
    yield server, f"http://127.0.0.1:{port}"
    await server.close()


async def test_routes_match_paths_methods_and_pass_through_middlewares(
    served: tuple[HttpServer, str],
) -> None:
    _, base = served
    client = HttpClient()
    try:
        got = await client.request("GET", f"{base}/v1/items/a7?x=1&y=")
        assert got.status == 200
        assert got.headers["x-seen"] == "yes"
        assert got.json() == {
            "method": "GET",
            "route": "/v1/items/{item_id}",
            "match": {"item_id": "a7"},
            "query": {"x": "1", "y": ""},
            "body": "",
            "type": "",
            "tag": "outer",
        }
        posted = await client.request("POST", f"{base}/v1/items", json={"a": [1, 2]})
        assert posted.json()["body"] == '{"a":[1,2]}'
        assert posted.json()["type"] == "application/json"
        assert (await client.request("GET", f"{base}/nowhere")).status == 404
        wrong = await client.request("DELETE", f"{base}/v1/items")
        assert wrong.status == 405
        assert wrong.headers["allow"] == "POST"
        deleted = await client.request("DELETE", f"{base}/v1/items/a7")
        assert deleted.json()["method"] == "DELETE"
        assert deleted.json()["match"] == {"item_id": "a7"}
        put_on_item = await client.request("PUT", f"{base}/v1/items/a7", json={})
        assert put_on_item.headers["allow"] == "DELETE, GET"
        assert (await client.request("GET", f"{base}/conflict")).status == 409
        head = await client.request("HEAD", f"{base}/v1/items/a7")
        assert head.status == 200
        assert head.body == b""
    finally:
        await client.close()


async def test_a_handler_that_raises_is_a_500_and_the_server_goes_on(
    served: tuple[HttpServer, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, base = served
    client = HttpClient()
    try:
        assert (await client.request("GET", f"{base}/boom")).status == 500
        assert "a bug in a handler" in caplog.text
        assert (await client.request("GET", f"{base}/v1/items/1")).status == 200
    finally:
        await client.close()


async def test_bodies_over_the_limit_are_413_whether_declared_or_chunked(
    served: tuple[HttpServer, str],
) -> None:
    _, base = served
    port = int(base.rsplit(":", 1)[1])
    client = HttpClient()
    try:
        big = await client.request("POST", f"{base}/v1/items", json="x" * 2000)
        assert big.status == 413
        assert b"over the limit of 1000 bytes" in big.body
        # however a handler reads the refused body, it meets the 413, not an empty body
        parsed = await client.request("POST", f"{base}/v1/parsed", json="x" * 2000)
        assert parsed.status == 413
        small = await client.request("POST", f"{base}/v1/parsed", json=[1])
        assert small.json() == {"size": 3, "json": [1]}
    finally:
        await client.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"200\r\n" + b"y" * 0x200 + b"\r\n" for _ in range(3))
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 413 ")
    writer.close()


async def test_garbage_is_a_400_and_keep_alive_serves_many_requests(
    served: tuple[HttpServer, str],
) -> None:
    server, base = served
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
    await writer.drain()
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400 ")
    assert server.bad_requests == 1
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    one = b"GET /v1/items/1 HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(one * 3)  # pipelined on one connection
    await writer.drain()
    seen = b""
    while seen.count(b"HTTP/1.1 200 ") < 3:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, seen
        seen += chunk
    writer.close()


async def test_connections_past_the_cap_are_closed_and_counted(
    served: tuple[HttpServer, str],
) -> None:
    server, base = served
    port = int(base.rsplit(":", 1)[1])
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert server.refused_connections == 1
    for _, w in [*held, (reader, writer)]:
        w.close()


async def test_the_client_times_out_and_reports_refused_peers(
    served: tuple[HttpServer, str],
) -> None:
    _, base = served
    client = HttpClient()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await client.request("GET", f"{base}/slow", timeout=0.2)
        with pytest.raises(ClientError, match=str(dead)):
            await client.request("GET", f"http://127.0.0.1:{dead}/x")
        with pytest.raises(ClientError, match="only http"):
            await client.request("GET", "https://example.org/")
    finally:
        await client.close()


async def test_a_kept_alive_connection_the_server_closed_is_replaced_once() -> None:
    """The client reuses a connection; the server (restarted on the same port) no longer
    has it: the request goes once more on a new connection and is answered."""
    client = HttpClient()
    first = HttpServer([get("/v1/items/{item_id}", _echo)])
    port = await first.listen_tcp("127.0.0.1", 0)
    try:
        assert (await client.request("GET", f"http://127.0.0.1:{port}/v1/items/1")).status == 200
        await first.close()
        second = HttpServer([get("/v1/items/{item_id}", _echo)])
        await second.listen_tcp("127.0.0.1", port)
        try:
            again = await client.request("GET", f"http://127.0.0.1:{port}/v1/items/2")
            assert again.json()["match"] == {"item_id": "2"}
        finally:
            await second.close()
    finally:
        await client.close()


async def test_closing_with_requests_in_flight_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = HttpServer([get("/slow", _slow)])
    port = await server.listen_tcp("127.0.0.1", 0)
    client = HttpClient()
    slow = asyncio.create_task(client.request("GET", f"http://127.0.0.1:{port}/slow"))
    idle = socket.create_connection(("127.0.0.1", port))  # a kept-alive peer between requests
    try:
        await asyncio.sleep(0.2)
        await server.close()
        with pytest.raises(ClientError):
            await slow
        for _ in range(3):
            await asyncio.sleep(0)  # the streams' done callbacks run
    finally:
        idle.close()
        await client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"G\x00T", b""])
_TARGETS = st.sampled_from([b"/v1/items/1", b"/v1/items", b"/", b"*", b"/%zz", b"/v1/items/\xff"])
_HEADER = st.tuples(
    st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Expect", b"X\x7f", b""]),
    st.binary(max_size=40),
)
_HOSTILE = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda m, t, v, hs, body: (
            m
            + b" "
            + t
            + b" "
            + v
            + b"\r\n"
            + b"".join(k + b": " + val + b"\r\n" for k, val in hs)
            + b"\r\n"
            + body
        ),
        _METHODS,
        _TARGETS,
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b""]),
        st.lists(_HEADER, max_size=5),
        st.binary(max_size=200),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_HOSTILE)
def test_whatever_a_peer_sends_the_server_answers_or_closes_and_serves_the_next(
    wire: bytes,
) -> None:
    """Hostile bytes on the socket never take the server down: it answers (a 4xx or 501 for
    what h11 refuses, never a 500) or closes, and the next well-formed request is served."""

    async def scenario() -> None:
        server = HttpServer([get("/v1/items/{item_id}", _echo), post("/v1/items", _echo)])
        port = await server.listen_tcp("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(wire)
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 15)
            writer.close()
            assert answer == b"" or answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 "))
            # h11's refusals are 4xx, or 501 for a transfer coding it does not speak (RFC 9112
            # 6.1); a 500 would be the server failing, not refusing
            assert not answer.startswith(b"HTTP/1.1 500"), answer[:300]
            client = HttpClient()
            try:
                again = await client.request("GET", f"http://127.0.0.1:{port}/v1/items/ok")
                assert again.status == 200
            finally:
                await client.close()
        finally:
            await server.close()

    asyncio.run(scenario())
