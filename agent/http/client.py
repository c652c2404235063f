"""A small HTTP/1.1 client over asyncio streams (h11), with kept-alive connections per peer.

The household client's calls to its coordinator on the LAN (plain HTTP: the peers are
authenticated by the signed handshake and a session token, not by TLS). One request at a
time per connection; a connection is reused while idle for less than `IDLE_S`, and a
request on a reused connection that the peer had closed meanwhile is sent once more on a
new one (nothing of it was answered, so nothing happens twice).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from agent.errors import AgentError

MAX_HEAD = 16 * 1024
MAX_BODY = 4 * 1024 * 1024
"""An answer over this is refused: the peer controls it."""
IDLE_S = 30.0
"""Kept-alive connections idle longer are not reused (the server's own limit is longer)."""
MAX_IDLE_PER_PEER = 4
READ_CHUNK = 64 * 1024


class ClientError(AgentError):
    """The request could not be sent or answered (refused, reset, not HTTP, too large)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class _Outgoing:
    method: str
    target: str
    head: Mapping[str, str]
    body: bytes


class _Stale(Exception):
    """A reused connection was closed by the peer before any of the answer arrived."""


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h11: h11.Connection
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


class HttpClient:
    """`await client.request("POST", "http://host:port/path", json=..., timeout=3.0)`."""

    def __init__(self, timeout: float = 3.0) -> None:
        self._timeout = timeout
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Sends one request and reads its whole answer within `timeout` seconds
        (TimeoutError after it); ClientError when the peer cannot be reached or answers
        with something that is not HTTP."""
        if self._closed:
            raise ClientError("the client is closed")
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ClientError(f"{url}: only http://host:port/... is spoken here")
        peer = (parts.hostname, parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = b"" if json is None else _dumps(json)
        head = {"Host": parts.netloc, "Accept": "application/json", **(headers or {})}
        if json is not None:
            head["Content-Type"] = "application/json"
        head["Content-Length"] = str(len(body))
        out = _Outgoing(method, target, head, body)
        async with asyncio.timeout(self._timeout if timeout is None else timeout):
            conn = self._reuse(peer)
            if conn is not None:
                try:
                    return await self._exchange(peer, conn, out, reused=True)
                except _Stale:
                    pass
            conn = await self._open(peer)
            try:
                return await self._exchange(peer, conn, out, reused=False)
            except _Stale as exc:
                raise ClientError(f"{url}: the connection closed before an answer") from exc

    async def close(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _reuse(self, peer: tuple[str, int]) -> _Conn | None:
        now = asyncio.get_running_loop().time()
        conns = self._idle.get(peer, [])
        while conns:
            conn = conns.pop()
            if now - conn.idle_since < IDLE_S and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def _open(self, peer: tuple[str, int]) -> _Conn:
        try:
            reader, writer = await asyncio.open_connection(*peer)
        except OSError as exc:
            raise ClientError(f"{peer[0]}:{peer[1]}: {exc}") from exc
        return _Conn(reader, writer, h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD))

    async def _exchange(
        self,
        peer: tuple[str, int],
        conn: _Conn,
        out: _Outgoing,
        *,
        reused: bool,
    ) -> Answer:
        keep = False
        try:
            request = h11.Request(
                method=out.method,
                target=out.target,
                headers=[(k.encode(), v.encode("latin-1")) for k, v in out.head.items()],
            )
            data = conn.h11.send(request) or b""
            if out.body:
                data += conn.h11.send(h11.Data(data=out.body)) or b""
            data += conn.h11.send(h11.EndOfMessage()) or b""
            conn.writer.write(data)
            await conn.writer.drain()
            answer = await _read_answer(conn, reused)
            keep = conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE
            if keep:
                conn.h11.start_next_cycle()
            return answer
        except (h11.ProtocolError, ConnectionError, OSError) as exc:
            if reused and isinstance(exc, ConnectionError):
                raise _Stale from exc
            raise ClientError(f"{peer[0]}:{peer[1]}{out.target}: {exc}") from exc
        finally:
            if keep and not self._closed:
                conn.idle_since = asyncio.get_running_loop().time()
                idle = self._idle.setdefault(peer, [])
                idle.append(conn)
                while len(idle) > MAX_IDLE_PER_PEER:
                    idle.pop(0).close()
            else:
                conn.close()


async def _read_answer(conn: _Conn, reused: bool) -> Answer:
    response: h11.Response | None = None
    chunks: list[bytes] = []
    size = 0
    got_any = False
    while True:
        event = conn.h11.next_event()
        if event is h11.NEED_DATA:
            data = await conn.reader.read(READ_CHUNK)
            if not data and reused and not got_any:
                raise _Stale
            got_any = got_any or bool(data)
            conn.h11.receive_data(data)
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY:
                raise ClientError(f"an answer over {MAX_BODY} bytes")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        else:  # ConnectionClosed before the end
            if reused and not got_any:
                raise _Stale
            raise ClientError("the connection closed inside an answer")
    if response is None:
        raise ClientError("no answer")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
    return Answer(response.status_code, headers, b"".join(chunks))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
