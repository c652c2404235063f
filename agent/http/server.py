"""A small HTTP/1.1 server over asyncio streams (h11): routes, middlewares, JSON answers.

The agent's local API and the household coordinator are served by this, not by aiohttp: a
thin device (the speaker) must stay under 48 MB, and `aiohttp` with `aiohttp.web` costs
13 MB of imports (`python -m bench.rss_breakdown`). The shapes follow aiohttp's (a handler
takes a `Request` and returns a `Response`; a middleware takes the request and the next
handler; `HTTPError` is answered with its status) so the routes read as they did.

Everything a peer controls is bounded: header size (`MAX_HEAD`), body size (`max_body`,
413 before reading when `Content-Length` says so), connections (`max_connections`), and
time (`HEAD_TIMEOUT_S` to send a request's head and body, `IDLE_TIMEOUT_S` between requests
on a kept-alive connection). A request h11 cannot parse is answered 400 and the connection
closed; a handler that raises is answered 500 and logged, and the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
"""Request line and headers, bytes (h11's `max_incomplete_event_size`)."""
HEAD_TIMEOUT_S = 10.0
"""A request's head and body must arrive within this (a slow sender holds a connection)."""
IDLE_TIMEOUT_S = 75.0
"""A kept-alive connection with no new request is closed after this (aiohttp's default)."""
READ_CHUNK = 64 * 1024
REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


class HTTPError(Exception):
    """Raised by a handler (or the server) to answer `status` with `text`."""

    def __init__(self, status: int, text: str = "", headers: Mapping[str, str] | None = None):
        super().__init__(f"{status}: {text}" if text else str(status))
        self.status = status
        self.text = text or REASONS.get(status, "")
        self.headers = dict(headers or {})


class Headers(Mapping[str, str]):
    """A request's headers, looked up without regard to case (the last of repeated ones)."""

    def __init__(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        self._map = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in pairs}

    def __getitem__(self, key: str) -> str:
        return self._map[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._map

    def __iter__(self) -> Any:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)


@dataclass(slots=True)
class Request:
    """One request, its body read whole (at most the server's `max_body`)."""

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    raw: bytes
    """The body as read (empty when it was refused: read it through `body` or `read()`)."""
    transport: asyncio.BaseTransport | None = None
    route: str | None = None
    """The matched route's pattern (`/v1/claims/{claim_id}`); None when none matched."""
    match_info: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    """What middlewares hand to handlers (the parsed body, the caller)."""
    declared_length: int | None = None
    """`Content-Length` as the client sent it (None: none, or chunked)."""
    body_error: HTTPError | None = None
    """Why the body was not read (413): raised by `body`, `read()` and `json()`."""

    @property
    def body(self) -> bytes:
        """The body; a refused one raises its `HTTPError` (413), wherever a handler reads it."""
        if self.body_error is not None:
            raise self.body_error
        return self.raw

    @property
    def content_type(self) -> str:
        """The media type without parameters, lowercased (`application/json`)."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        """The declared `Content-Length` (None when the client sent none)."""
        return self.declared_length

    async def read(self) -> bytes:
        return self.body

    async def json(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain; charset=utf-8"


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(status, body, dict(headers or {}), "application/json; charset=utf-8")


Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, Handler], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str
    handler: Handler

    def regex(self) -> re.Pattern[str]:
        parts = re.split(r"\{(\w+)\}", self.pattern)
        out = "".join(f"(?P<{p}>[^/]+)" if i % 2 else re.escape(p) for i, p in enumerate(parts))
        return re.compile(f"^{out}$")


def get(pattern: str, handler: Handler) -> Route:
    return Route("GET", pattern, handler)


def post(pattern: str, handler: Handler) -> Route:
    return Route("POST", pattern, handler)


def put(pattern: str, handler: Handler) -> Route:
    return Route("PUT", pattern, handler)


def delete(pattern: str, handler: Handler) -> Route:
    return Route("DELETE", pattern, handler)


class Router:
    """Routes by path, then method: no path is 404, a path without the method 405 (with
    `Allow`); HEAD is served by the GET route, without the body."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = [(route, route.regex()) for route in routes]

    def resolve(self, request: Request) -> Handler:
        allowed: list[str] = []
        method = "GET" if request.method == "HEAD" else request.method
        for route, regex in self._routes:
            matched = regex.match(request.path)
            if matched is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            request.route = route.pattern
            request.match_info = matched.groupdict()
            return route.handler
        if allowed:
            return _raiser(HTTPError(405, headers={"Allow": ", ".join(sorted(set(allowed)))}))
        return _raiser(HTTPError(404))


def _raiser(error: HTTPError) -> Handler:
    async def handler(request: Request) -> Response:
        raise error

    return handler


class HttpServer:
    """Serves `routes` through `middlewares` (outermost first) on TCP and/or Unix sockets."""

    def __init__(
        self,
        routes: Sequence[Route],
        middlewares: Sequence[Middleware] = (),
        *,
        max_body: int = 1024 * 1024,
        max_connections: int = 64,
        name: str = "http",
    ) -> None:
        self._router = Router(routes)
        self._middlewares = tuple(middlewares)
        self.max_body = max_body
        self._slots = asyncio.Semaphore(max_connections)
        self.name = name
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False
        self.refused_connections = 0
        """Connections closed at once because `max_connections` were open."""
        self.bad_requests = 0
        """Requests answered 400 because they were not HTTP/1.1 h11 could parse."""

    async def listen_tcp(self, host: str, port: int) -> int:
        """Listens on `host:port` (0: any free port); returns the bound port."""
        server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def listen_unix(self, path: Path) -> None:
        self._servers.append(await asyncio.start_unix_server(self._accept, str(path)))

    async def close(self) -> None:
        """Stops listening, then ends the open connections."""
        self._closing = True
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        self._servers.clear()

    async def handle(self, request: Request) -> Response:
        """One request through the middlewares and its route (also for in-process tests)."""
        handler: Handler = self._router.resolve(request)
        for middleware in reversed(self._middlewares):
            handler = _wrap(middleware, handler)
        try:
            return await handler(request)
        except HTTPError as exc:
            return Response(exc.status, exc.text.encode(), exc.headers)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._slots.locked():
            self.refused_connections += 1
            writer.close()
            return
        async with self._slots:
            if task is not None:
                self._connections.add(task)
            try:
                await _Connection(self, reader, writer).serve()
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                pass
            except asyncio.CancelledError:
                # `close` cancelled it: the connection's task ends normally, for Python 3.11's
                # streams read a cancelled task's `exception()` in a done callback, which
                # raises and is logged as "Exception in callback" (python/cpython#113538, fixed
                # in 3.12). Any other cancellation goes on up.
                if not self._closing:
                    raise
            finally:
                if task is not None:
                    self._connections.discard(task)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


def _wrap(middleware: Middleware, inner: Handler) -> Handler:
    async def handler(request: Request) -> Response:
        return await middleware(request, inner)

    return handler


class _Connection:
    """One client's connection: requests one after another (keep-alive), each answered."""

    def __init__(
        self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def serve(self) -> None:
        while True:
            try:
                # `asyncio.timeout`, not `wait_for`: no task made per request (3.11's wait_for
                # makes one), which showed in the household's rank round trips
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    first = await self._next()
                if not isinstance(first, h11.Request):
                    return  # the client closed between requests
                async with asyncio.timeout(HEAD_TIMEOUT_S):
                    request = await self._request(first)
            except h11.RemoteProtocolError as exc:
                self._server.bad_requests += 1
                await self._refuse(exc.error_status_hint, str(exc))
                return
            except HTTPError as exc:
                await self._refuse(exc.status, exc.text)
                return
            response = await self._answer(request)
            if request.body_error is not None:
                response.headers["Connection"] = "close"  # the rest of its body is unread
            await self._send(response, head_only=request.method == "HEAD")
            if request.body_error is not None:
                return
            if self._conn.our_state is h11.MUST_CLOSE or self._conn.their_state is h11.MUST_CLOSE:
                return
            try:
                self._conn.start_next_cycle()
            except h11.LocalProtocolError:
                return  # the client did not finish its request body: nothing more to read

    async def _next(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._conn.they_are_waiting_for_100_continue:
                await self._emit(h11.InformationalResponse(status_code=100, headers=[]))
            data = await self._reader.read(READ_CHUNK)
            self._conn.receive_data(data)

    async def _request(self, head: h11.Request) -> Request:
        """The request with its body; a body over the limit is not read further and the
        request carries a 413 that its `read()` raises (after the middlewares have looked
        at it, as aiohttp does), and the connection closes after the answer."""
        limit = self._server.max_body
        length = _content_length(head.headers)
        chunks: list[bytes] = []
        refused: HTTPError | None = None
        if length is not None and length > limit:
            refused = HTTPError(413, f"body of {length} bytes is over the limit of {limit} bytes")
        size = 0
        while refused is None:
            event = await self._next()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    refused = HTTPError(413, f"body is over the limit of {limit} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise HTTPError(400, "the connection closed inside a request")
        target = head.target.decode("latin-1")
        parts = urlsplit(target)
        return Request(
            method=head.method.decode("ascii", "replace").upper(),
            path=parts.path or "/",
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=Headers(head.headers),
            raw=b"" if refused else b"".join(chunks),
            transport=self._writer.transport,
            declared_length=length,
            body_error=refused,
        )

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._server.handle(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "%s: error serving %s %s", self._server.name, request.method, request.path
            )
            return Response(500, b"Internal Server Error")

    async def _send(self, response: Response, *, head_only: bool = False) -> None:
        """The head and body in one write (one segment for a small answer, not three)."""
        headers = {"Content-Type": response.content_type, **response.headers}
        headers["Content-Length"] = str(len(response.body))
        head = h11.Response(
            status_code=response.status,
            headers=[(k.encode(), v.encode("latin-1")) for k, v in headers.items()],
            reason=REASONS.get(response.status, "").encode(),
        )
        data = self._conn.send(head) or b""
        if response.body and not head_only:
            data += self._conn.send(h11.Data(data=response.body)) or b""
        data += self._conn.send(h11.EndOfMessage()) or b""
        self._writer.write(data)
        await self._writer.drain()

    async def _refuse(self, status: int, text: str) -> None:
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
            await self._send(Response(status, text[:500].encode(), {"Connection": "close"}))

    async def _emit(self, event: Any) -> None:
        data = self._conn.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None
