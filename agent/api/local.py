"""The device-local HTTP API (`agent.http`, loopback only): signals, offers, outcomes, consent.

Built over an `agent.api.port.AgentPort` (what it needs of the agent), so it is testable
in-process; domain errors become answers through `agent.api.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import struct
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.api.errors import answer
from agent.api.owners import Owner, Owners, TokenError
from agent.api.port import AgentPort
from agent.errors import (
    AgentError,
    ConfigError,
    DiskFull,
    InvalidInput,
    KeyReused,
    StoreError,
    TooLarge,
)
from agent.http.server import (
    Handler,
    HTTPError,
    HttpServer,
    Request,
    Response,
    get,
    json_response,
    post,
    put,
)
from agent.intake.consent import parse_purposes
from agent.intake.service import signals_answer
from agent.intake.validate import parse_outcome, parse_signals
from agent.offers.claims import claim_json
from agent.store import idempotency
from agent.store.idempotency import DuplicateRequest
from mqttlink.logs import OnceLogger
from protocol.codec import loads_finite
from protocol.errors import NonFiniteNumber
from protocol.ids import format_time
from protocol.social import normalise_code

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
MAX_LIMIT = 50
BODY = "edgemart_body"
"""The parsed JSON body, read once per request (the idempotency check and the route)."""
DISK_FULL_RETRY_S = 60
"""`Retry-After` of a 507: the maintenance loop looks at the disk every minute."""
KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
PUBLIC = frozenset({"/healthz", "/readyz"})
"""Served without a token (liveness and readiness probes); still loopback-only by `Host`."""
SCOPE_OF: dict[tuple[str, str], str | None] = {
    ("POST", "/v1/signals"): "signals",
    ("GET", "/v1/offers"): "offers",
    ("POST", "/v1/outcomes"): "outcomes",
    ("POST", "/v1/claims"): "claims",
    ("GET", "/v1/claims/{claim_id}"): "claims",
    ("POST", "/v1/groups"): "claims",
    ("GET", "/v1/groups/{ref}"): "claims",
    ("POST", "/v1/cuts"): "claims",
    ("GET", "/v1/cuts/{ref}"): "claims",
    ("GET", "/v1/consent"): None,
    ("PUT", "/v1/consent"): "consent",
    ("GET", "/v1/status"): "status",
    ("GET", "/v1/quarantine"): "status",
    ("GET", "/metrics"): "status",
}
"""(method, route) -> the scope its token needs (None: any valid token)."""
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
OWNER = "edgemart_owner"
"""The app whose token the request carries."""


def _hostname(value: str) -> str:
    """The host part of a `Host` header or an origin (`[::1]:8731` -> `::1`), lowercased."""
    try:
        return (urlsplit(value if "//" in value else f"//{value}").hostname or "").lower()
    except ValueError:
        return ""


def peer_uid(request: Request) -> int | None:
    """The user id of the process on the other end of a Unix-socket request (SO_PEERCRED,
    from the kernel: not forgeable by the caller); None over TCP."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def clear_socket(path: Path) -> None:
    """A socket file a killed agent left is removed; any other file there is an error."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket", field="api_socket")
    path.unlink()


def own_socket(path: Path, group: str | None) -> None:
    """Mode 0660: the agent's user and group only (the group `group` when given)."""
    if group is not None:
        try:
            shutil.chown(path, group=int(group) if group.isdigit() else group)
        except (LookupError, OSError) as exc:
            raise ConfigError(f"{path}: group {group!r}: {exc}", field="api_socket_group") from exc
    os.chmod(path, 0o660)


class LocalApi:
    """Serves one agent on loopback (`port`, None: no TCP) and/or a Unix socket
    (`socket_path`, mode 0660, group `socket_group`); `port` is the bound port once
    started. Over the socket a caller without a token is known by its user id (peer
    credentials): root and the agent's user are admin, others as the app bound to them."""

    def __init__(
        self,
        agent: AgentPort,
        port: int | None = 0,
        socket_path: Path | None = None,
        socket_group: str | None = None,
    ) -> None:
        self._agent = agent
        self._requested_port = port
        self._socket_path = socket_path
        self._socket_group = socket_group
        self.port: int | None = None
        self._faults = OnceLogger(log)
        self._owners = Owners(agent.settings.data_dir)
        max_bytes = agent.settings.max_request_bytes
        self.server = HttpServer(
            [
                post("/v1/signals", self.post_signals),
                get("/v1/offers", self.get_offers),
                post("/v1/outcomes", self.post_outcome),
                get("/v1/consent", self.get_consent),
                put("/v1/consent", self.put_consent),
                get("/v1/status", self.get_status),
                get("/v1/quarantine", self.get_quarantine),
                get("/healthz", self.healthz),
                get("/readyz", self.readyz),
                get("/metrics", self.metrics),
                post("/v1/claims", self.post_claim),
                get("/v1/claims/{claim_id}", self.get_claim),
                post("/v1/groups", partial(self.post_social, "group")),
                get("/v1/groups/{ref}", partial(self.get_social, "group")),
                post("/v1/cuts", partial(self.post_social, "cut")),
                get("/v1/cuts/{ref}", partial(self.get_social, "cut")),
            ],
            [self._http_errors, self._owned],
            max_body=max_bytes,
            name="local API",
        )

    async def start(self) -> int | None:
        if self._socket_path is not None:
            await asyncio.to_thread(clear_socket, self._socket_path)
            await self.server.listen_unix(self._socket_path)
            await asyncio.to_thread(own_socket, self._socket_path, self._socket_group)
            log.info("local API on unix:%s", self._socket_path)
        if self._requested_port is None:
            return None
        self.port = await self.server.listen_tcp(HOST, self._requested_port)
        log.info("local API on http://%s:%d", HOST, self.port)
        return self.port

    async def stop(self) -> None:
        await self.server.close()
        if self._socket_path is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._socket_path.unlink)

    # ------------------------------------------------------------ helpers

    def _reject(self, status: int, errors: list[dict[str, str]]) -> Response:
        self._agent.metrics.inc("api_rejected")
        self._faults.log(str(status), "local API refused a request (%d): %s", status, errors[:1])
        return json_response({"errors": errors}, status=status)

    async def _http_errors(self, request: Request, handler: Handler) -> Response:
        """The server's own refusals (no such route, wrong method) in the same error body as
        ours, and counted like them."""
        try:
            return await handler(request)
        except HTTPError as exc:
            if not 400 <= exc.status < 500:
                raise
            return self._reject(exc.status, [{"loc": "(request)", "msg": exc.text}])

    async def _owned(self, request: Request, handler: Handler) -> Response:
        """Only local callers with a token whose scopes cover the route; JSON bodies only.

        A browser page can reach loopback: a foreign `Host` (DNS rebinding) or `Origin`
        (a cross-site form or fetch) is refused before anything else, and so is a body that
        is not `application/json` (what a form can send without a CORS preflight)."""
        headers = request.headers
        host = headers.get("Host")
        origin = headers.get("Origin")
        if host is not None and _hostname(host) not in LOOPBACK:
            return self._refuse("api_foreign_host", 403, "Host", "only loopback hosts are served")
        if origin is not None and _hostname(origin) not in LOOPBACK:
            return self._refuse("api_foreign_origin", 403, "Origin", "cross-origin request")
        if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return self._refuse("api_foreign_origin", 403, "Origin", "cross-site request")
        if request.path in PUBLIC:
            return await handler(request)
        authorization = headers.get("Authorization", "")
        uid = None if authorization else peer_uid(request)
        owner = await (self._owner(authorization) if uid is None else self._peer(uid))
        if owner is None:
            msg = "a valid bearer token is required"
            if uid is not None:
                msg = f"uid {uid} is bound to no app (edgemart agent token bind), and no token"
            refused = self._refuse("api_unauthorized", 401, "Authorization", msg)
            refused.headers["WWW-Authenticate"] = 'Bearer realm="edgemart-agent"'
            return refused
        method = "GET" if request.method == "HEAD" else request.method
        route = (method, request.route or request.path)
        if route in SCOPE_OF:
            scope = SCOPE_OF[route]
            if scope is not None and scope not in owner.scopes:
                msg = f"the token of app {owner.app!r} lacks the {scope!r} scope"
                return self._refuse("api_forbidden", 403, "Authorization", msg)
        if (
            request.method in ("POST", "PUT", "PATCH")
            and request.content_type != "application/json"
        ):
            msg = f"the body must be application/json, not {request.content_type}"
            return self._refuse("api_unsupported_media", 415, "Content-Type", msg)
        request.state[OWNER] = owner
        return await handler(request)

    def _refuse(self, counter: str, status: int, loc: str, msg: str) -> Response:
        self._agent.metrics.inc(counter)
        return self._reject(status, [{"loc": loc, "msg": msg}])

    async def _owner(self, authorization: str) -> Owner | None:
        """The app of the bearer token (the apps file read again when due or on a miss)."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token = token.strip()
        owners = self._owners
        fresh = owners.due()
        if fresh:
            await self._refresh()
        found = owners.owner(token)
        if found is None and not fresh:
            await self._refresh()  # a token made by `edgemart agent token create` just now
            found = owners.owner(token)
        return found

    async def _peer(self, uid: int) -> Owner | None:
        """The app of a Unix-socket caller running as `uid` (the file read again on a miss:
        a uid bound just now)."""
        fresh = self._owners.due()
        if fresh:
            await self._refresh()
        found = self._owners.peer(uid)
        if found is None and not fresh:
            await self._refresh()
            found = self._owners.peer(uid)
        return found

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self._owners.refresh)
        except (OSError, TokenError) as exc:  # the tokens already read stay valid
            self._faults.log("tokens", "local API cannot read its app tokens: %s", exc)

    async def _body(self, request: Request) -> Any:
        """The request's JSON body (read and checked once per request)."""
        if BODY not in request.state:
            request.state[BODY] = await self._read_body(request)
        return request.state[BODY]

    async def _read_body(self, request: Request) -> Any:
        limit = self._agent.settings.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(
                f"body of {request.content_length} bytes is over the limit of {limit} bytes",
                limit=limit,
            )
        try:
            raw = await request.read()
        except HTTPError as exc:  # a body sent chunked, over the server's limit
            raise TooLarge(f"body over the limit of {limit} bytes", limit=limit) from exc
        try:
            return loads_finite(raw)
        except NonFiniteNumber as exc:
            # Never stored: a NaN or an overflowing number would poison every store after us.
            self._agent.metrics.inc("api_non_finite")
            msg = f"{exc.literal} is not a finite number (NaN, infinities and numbers past"
            raise InvalidInput([{"loc": exc.path, "msg": msg + " 64 bits are refused)"}]) from exc
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidInput([{"loc": "(body)", "msg": f"not JSON: {exc}"}]) from exc

    async def _keyed(
        self, request: Request, route: str, handler: Any, replay: Any = None
    ) -> Response:
        """`handler` under the request's `Idempotency-Key`, if it has one: a key committed
        within 24 h with the same body answers its original answer (`replay(body)` renders
        it, default as stored) and stores nothing; with another body, 409."""
        key = request.headers.get(KEY_HEADER)
        if key is None:
            return await self._guard(request, handler)

        async def keyed(req: Request) -> Response:
            problem = idempotency.key_problem(key)
            if problem is not None:
                raise InvalidInput([{"loc": KEY_HEADER, "msg": problem}])
            digest = idempotency.fingerprint(await self._body(req))
            for _ in range(2):  # once more if a concurrent retry committed it meanwhile
                known = await self._agent.find_request(route, key)
                if known is not None:
                    return await self._replay(route, key, known, digest, replay)
                with idempotency.intent(route, key, digest):
                    try:
                        response: Response = await handler(req)
                    except DuplicateRequest:
                        continue
                    return response
            raise InvalidInput([{"loc": KEY_HEADER, "msg": "retried concurrently; try again"}])

        return await self._guard(request, keyed)

    async def _replay(
        self, route: str, key: str, known: idempotency.Stored, digest: str, replay: Any
    ) -> Response:
        if known.fingerprint != digest:
            raise KeyReused(key)
        self._agent.metrics.inc("api_replayed")
        body = await replay(known.body) if replay is not None else known.body
        return json_response(body, status=known.status, headers={REPLAYED_HEADER: "true"})

    async def _guard(self, request: Request, handler: Any) -> Response:
        try:
            response: Response = await handler(request)
            return response
        except AgentError as exc:
            known = answer(exc)
            if known is None:
                raise
            status, errors = known
            if isinstance(exc, DiskFull):
                # a state, not a crash: the app keeps its data and retries later
                self._agent.metrics.inc("api_disk_full")
                self._faults.log("507", "local API: %s", exc)
                return json_response(
                    {"errors": errors, "free_bytes": exc.free_bytes},
                    status=status,
                    headers={"Retry-After": str(DISK_FULL_RETRY_S)},
                )
            if isinstance(exc, StoreError):
                # nothing of the request was stored (its transaction rolled back): retry
                log.error("store failure serving %s: %s", request.path, exc)  # noqa: TRY400
                return json_response(
                    {"errors": errors}, status=status, headers={"Retry-After": "5"}
                )
            return self._reject(status, errors)

    # ------------------------------------------------------------ routes

    async def post_signals(self, request: Request) -> Response:
        async def handle(req: Request) -> Response:
            body = await self._body(req)
            parsed = parse_signals(body, max_items=self._agent.settings.max_request_items)
            ids = await self._agent.accept_parsed(parsed)
            return json_response(signals_answer(ids), status=202)

        return await self._keyed(request, "signals", handle)

    async def get_offers(self, request: Request) -> Response:
        async def handle(req: Request) -> Response:
            surface = req.query.get("surface", "")
            errors: list[dict[str, str]] = []
            if surface not in self._agent.settings.profile.surfaces:
                known = ", ".join(self._agent.settings.profile.surfaces)
                errors.append({"loc": "surface", "msg": f"unknown surface (known: {known})"})
            raw_limit = req.query.get("limit", "3")
            # isdigit() alone takes "²" (int() refuses it) and any number of digits
            digits = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 3
            limit = int(raw_limit) if digits else 0
            if not 1 <= limit <= MAX_LIMIT:
                errors.append({"loc": "limit", "msg": f"must be an integer 1..{MAX_LIMIT}"})
            if errors:
                raise InvalidInput(errors)
            explain = req.query.get("explain", "") in ("1", "true", "yes")
            decision = await self._agent.decide(surface, limit, explain=explain)
            body: dict[str, Any] = {
                "surface": surface,
                "model_version": self._agent.model_version,
                "offers": [r.to_json() for r in decision.ranked],
            }
            if decision.held_until is not None:
                body["held_until"] = format_time(decision.held_until)
            if explain:
                body["filtered"] = [
                    {"offer_id": oid, "reason": reason} for oid, reason in decision.filtered
                ]
            return json_response(body)

        return await self._guard(request, handle)

    async def post_outcome(self, request: Request) -> Response:
        async def handle(req: Request) -> Response:
            outcome = parse_outcome(await self._body(req))
            result = await self._agent.record_outcome_detail(
                outcome.offer_id, outcome.kind, outcome.surface
            )
            # an unattributed conversion is answered, not stored: 200 with the reason
            return json_response(result, status=202 if result.get("id") else 200)

        return await self._keyed(request, "outcomes", handle)

    async def get_consent(self, request: Request) -> Response:
        return json_response(self._agent.consent.to_json())

    async def put_consent(self, request: Request) -> Response:
        async def handle(req: Request) -> Response:
            body = await self._body(req)
            if not isinstance(body, dict) or set(body) != {"purposes"}:
                raise InvalidInput([{"loc": "purposes", "msg": 'body must be {"purposes": {...}}'}])
            purposes = parse_purposes(body["purposes"], loc_prefix="purposes")
            state = await self._agent.set_consent(purposes)
            return json_response(state.to_json())

        return await self._guard(request, handle)

    async def get_status(self, request: Request) -> Response:
        return json_response(self._agent.status())

    async def get_quarantine(self, request: Request) -> Response:
        """Outbox rows that could not be sent, kept for export (newest 1000 at most)."""
        rows = await self._agent.quarantined(1000)
        return json_response({"count": len(rows), "rows": rows})

    async def healthz(self, request: Request) -> Response:
        return json_response({"ok": True, "link": self._agent.status()["link"]})

    async def readyz(self, request: Request) -> Response:
        """Ready: the broker link is up, the store answers, every owned loop runs (503 if not)."""
        ready = await self._agent.readiness()
        return json_response(ready, status=200 if ready["ready"] else 503)

    async def metrics(self, request: Request) -> Response:
        body = self._agent.metrics.render()
        return Response(200, body, content_type="text/plain; version=0.0.4")

    async def post_claim(self, request: Request) -> Response:
        async def handle(req: Request) -> Response:
            body = await self._body(req)
            offer_id = body.get("offer_id") if isinstance(body, dict) else None
            if not isinstance(body, dict) or set(body) != {"offer_id"}:
                raise InvalidInput([{"loc": "(body)", "msg": 'body must be {"offer_id": "..."}'}])
            if not isinstance(offer_id, str) or not _ID_RE.fullmatch(offer_id):
                raise InvalidInput([{"loc": "offer_id", "msg": "must be an offer id"}])
            row, created = await self._agent.claim(offer_id)
            return json_response(claim_json(row), status=202 if created else 200)

        async def replay(stored: dict[str, Any]) -> dict[str, Any]:
            row = await self._agent.get_claim(str(stored.get("claim_id")))
            return claim_json(row) if row is not None else stored

        return await self._keyed(request, "claims", handle, replay)

    async def post_social(self, kind: str, request: Request) -> Response:
        """`{"offer_id": ...}` starts a group (a cut); `{"code": ...}` joins the group (helps
        the cut) another household shared. 202 with the request and, once answered, the
        group's or cut's state."""
        verb_of_code = "join" if kind == "group" else "help"

        async def handle(req: Request) -> Response:
            body = await self._body(req)
            if not isinstance(body, dict) or len(body) != 1 or not {"offer_id", "code"} & set(body):
                raise InvalidInput(
                    [
                        {
                            "loc": "(body)",
                            "msg": 'body must be {"offer_id": "..."} or {"code": "..."}',
                        }
                    ]
                )
            if "offer_id" in body:
                offer_id = body["offer_id"]
                if not isinstance(offer_id, str) or not _ID_RE.fullmatch(offer_id):
                    raise InvalidInput([{"loc": "offer_id", "msg": "must be an offer id"}])
                shown = await self._agent.social_request(kind, "start", offer_id=offer_id)
            else:
                code = normalise_code(body["code"]) if isinstance(body["code"], str) else None
                if code is None:
                    raise InvalidInput(
                        [{"loc": "code", "msg": "must be an 8-character share code"}]
                    )
                shown = await self._agent.social_request(kind, verb_of_code, code=code)
            return json_response(shown, status=202)

        async def replay(stored: dict[str, Any]) -> dict[str, Any]:
            shown = await self._agent.social_show(str(stored.get("request_id")))
            return shown if shown is not None else stored

        return await self._keyed(request, "social", handle, replay)

    async def get_social(self, kind: str, request: Request) -> Response:
        async def handle(req: Request) -> Response:
            ref = req.match_info["ref"]
            shown = await self._agent.social_show(ref) if _ID_RE.fullmatch(ref) else None
            if shown is None or shown.get("kind", kind) != kind:
                return self._reject(404, [{"loc": "ref", "msg": f"no {kind} {ref[:64]!r}"}])
            return json_response(shown)

        return await self._guard(request, handle)

    async def get_claim(self, request: Request) -> Response:
        async def handle(req: Request) -> Response:
            claim_id = req.match_info["claim_id"]
            row = await self._agent.get_claim(claim_id) if len(claim_id) <= 64 else None
            if row is None:
                return self._reject(404, [{"loc": "claim_id", "msg": f"no claim {claim_id!r}"}])
            return json_response(claim_json(row))

        return await self._guard(request, handle)


_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
