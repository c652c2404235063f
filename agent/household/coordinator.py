"""The coordinator's LAN API: the handshake, then household context, contributions, appliance
levels, household caps and ranking for thin devices (`POST /lan/v1/rank`: the wire of
`agent.decide.remote`, scored by the coordinator's `Ranker` with the household's context). Every
eligible device runs it from the start (its port is in its advert) and answers household calls
only while it is the elected coordinator (409 otherwise). Bound to the LAN interface (loopback in
tests). Served by `agent.http.server`, not aiohttp: a thin device must stay small."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.decide.remote import RankRequest, RankResult, RemoteRankError, parse_request
from agent.errors import ScoringError
from agent.features.household import HouseholdContext
from agent.household import handshake
from agent.household.membership import Credentials, MembershipError, check_membership
from agent.household.state import Exposure, HouseholdCaps, HouseholdState
from agent.http.server import (
    HTTPError,
    HttpServer,
    Request,
    Response,
    delete,
    get,
    json_response,
    post,
    put,
)
from protocol.household import Membership, key_fingerprint
from protocol.signing import Verifier

log = logging.getLogger(__name__)
MAX_BODY = 256 * 1024
MAX_SESSIONS = 64
MAX_CONNECTIONS = 64
"""Open LAN connections at once (a household has a few devices, each with a kept-alive one)."""
MAX_HELLOS = 128
HELLO_TTL_S = 30.0
SESSION_TTL_S = 3600.0

M = TypeVar("M", bound=BaseModel)
Ranker = Callable[[RankRequest, HouseholdContext], Awaitable[RankResult]]
"""(a thin device's request, the household's context now) -> its scores: what `/lan/v1/rank`
runs with the coordinator's model (`agent.household.join.model_ranker`); raises `ScoringError`
when the model fails."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HelloIn(_Body):
    nonce: str = Field(min_length=handshake.NONCE_LEN, max_length=handshake.NONCE_LEN)


class AuthIn(_Body):
    membership: dict[str, Any]
    nonce: str = Field(min_length=handshake.NONCE_LEN, max_length=handshake.NONCE_LEN)
    proof: str = Field(max_length=200)


class ContributionIn(_Body):
    counts: dict[str, int] = Field(max_length=64)
    tier: int = Field(default=0, ge=0, le=10)


class LevelsIn(_Body):
    levels: dict[str, float] = Field(max_length=16)


class ExposureIn(_Body):
    id: str = Field(min_length=1, max_length=64)
    offer_id: str = Field(min_length=1, max_length=128)
    campaign_id: str = Field(default="", max_length=128)
    at: float
    device_id: str | None = Field(default=None, max_length=64)
    """Whose it was, when a member replays the household's log to a new coordinator (absent:
    the caller's own)."""


class ExposuresIn(_Body):
    exposures: list[ExposureIn] = Field(max_length=2000)


@dataclass(frozen=True, slots=True)
class Session:
    device_id: str
    roles: frozenset[str]
    fingerprint: str
    expires: float


class CoordinatorServer:
    """`await start(host, port)`; `serving` says whether it answers household calls now."""

    def __init__(
        self,
        creds: Credentials,
        verifier: Verifier,
        *,
        counters: Counter[str] | None = None,
        ranker: Ranker | None = None,
        clock: Callable[[], float] = time.time,
        caps: Callable[[], HouseholdCaps] | None = None,
    ) -> None:
        """`caps`: the household caps in force now (the cloud's policy on this device,
        `agent.household.join`), read at each household call; None: the state's own."""
        self.creds = creds
        self.verifier = verifier
        self.counters = counters if counters is not None else Counter()
        self.ranker = ranker
        self.clock = clock
        self.caps = caps
        self.serving = False
        self.state = HouseholdState(creds.membership.household_id)
        self._hellos: OrderedDict[str, tuple[str, float]] = OrderedDict()  # nonce_s -> nonce_c
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._http: HttpServer | None = None
        self.port = 0

    def serve(self, on: bool) -> None:
        """Become (or stop being) the coordinator; a new term starts from an empty state that
        members rebuild."""
        if on and not self.serving:
            self.state = HouseholdState(self.creds.membership.household_id, self.state.caps)
            self._sessions.clear()
            log.info("coordinating household (fingerprint %s)", self.creds.fingerprint)
        self.serving = on

    def app(self) -> HttpServer:
        """The LAN API, not listening yet (`start` listens; tests may call `handle`)."""
        routes = [
            post("/lan/v1/hello", self._hello),
            post("/lan/v1/auth", self._auth),
            get("/lan/v1/context", self._context),
            put("/lan/v1/contribution", self._contribute),
            delete("/lan/v1/contribution", self._withdraw),
            put("/lan/v1/consumables", self._levels),
            get("/lan/v1/hold", self._hold),
            post("/lan/v1/exposures", self._exposures),
            post("/lan/v1/rank", self._rank),
        ]
        return HttpServer(routes, max_body=MAX_BODY, max_connections=MAX_CONNECTIONS, name="lan")

    async def start(self, host: str, port: int = 0) -> int:
        server = self.app()
        self.port = await server.listen_tcp(host, port)
        self._http = server
        return self.port

    async def stop(self) -> None:
        server, self._http = self._http, None
        if server is not None:
            await server.close()

    # ------------------------------------------------------------ handshake

    async def _hello(self, request: Request) -> Response:
        if not self.serving:
            return _not_coordinator()
        body = await _parse(request, HelloIn, self.counters)
        now = self.clock()
        nonce_s = handshake.new_nonce()
        self._hellos[nonce_s] = (body.nonce, now)
        while len(self._hellos) > MAX_HELLOS:
            self._hellos.popitem(last=False)
        proof = handshake.prove(self.creds.key, "server", body.nonce, nonce_s)
        return json_response({"membership": self.creds.wire, "nonce": nonce_s, "proof": proof})

    async def _auth(self, request: Request) -> Response:
        if not self.serving:
            return _not_coordinator()
        body = await _parse(request, AuthIn, self.counters)
        pending = self._hellos.pop(body.nonce, None)
        now = self.clock()
        if pending is None or now - pending[1] > HELLO_TTL_S:
            return self._refuse("no such hello (expired or replayed)")
        try:
            member = check_membership(
                body.membership, self.verifier, household_id=self.state.household_id
            )
        except MembershipError as exc:
            return self._refuse(exc.reason)
        if not handshake.check(
            member.device_key, body.proof, "client", body.nonce, pending[0], self.creds.fingerprint
        ):
            return self._refuse("the proof does not verify under the membership's key")
        token = secrets.token_urlsafe(24)
        self._sessions[token] = Session(
            member.device_id,
            frozenset(member.roles),
            key_fingerprint(member.device_key),
            now + SESSION_TTL_S,
        )
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        self.state.touch(member.device_id, now)
        self.counters["household_peers_authenticated"] += 1
        return json_response({"token": token, "expires_in": SESSION_TTL_S})

    def _refuse(self, reason: str) -> Response:
        self.counters["household_auth_refused"] += 1
        log.warning("household handshake refused: %s", reason)
        return json_response({"error": "unauthorized", "detail": reason}, status=401)

    def _session(self, request: Request) -> Session:
        if not self.serving:
            raise HTTPError(409, "not the coordinator")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        session = self._sessions.get(token.strip()) if scheme.lower() == "bearer" else None
        if session is None or session.expires < self.clock():
            self.counters["household_auth_refused"] += 1
            raise HTTPError(401, "no household session")
        self.state.touch(session.device_id, self.clock())
        if self.caps is not None:
            self.state.caps = self.caps()
        return session

    # ------------------------------------------------------------ household calls

    async def _context(self, request: Request) -> Response:
        session = self._session(request)
        if "appliance" in session.roles and len(session.roles) == 1:
            raise HTTPError(403, "appliances report, they do not read")
        snap = self.state.snapshot(self.clock())
        return json_response(
            {
                "household_id": snap.household_id,
                "consumable_need": dict(snap.consumable_need),
                "category_count_24h": dict(snap.category_count_24h),
                "member_tier": snap.member_tier,
                "active_devices": snap.active_devices,
                "as_of": snap.as_of,
            }
        )

    async def _contribute(self, request: Request) -> Response:
        session = self._session(request)
        body = await _parse(request, ContributionIn, self.counters)
        try:
            self.state.contribute(session.device_id, body.counts, body.tier, self.clock())
        except ValueError as exc:
            raise HTTPError(429, str(exc)) from exc
        return json_response({"ok": True})

    async def _withdraw(self, request: Request) -> Response:
        session = self._session(request)
        return json_response({"removed": self.state.withdraw(session.device_id)})

    async def _levels(self, request: Request) -> Response:
        session = self._session(request)
        body = await _parse(request, LevelsIn, self.counters)
        try:
            self.state.set_levels(session.device_id, body.levels)
        except ValueError as exc:
            raise HTTPError(429, str(exc)) from exc
        return json_response({"ok": True})

    async def _hold(self, request: Request) -> Response:
        session = self._session(request)
        now = self.clock()
        body = self.state.hold(session.device_id, now).to_wire()
        body["log"] = [e.to_wire() for e in self.state.recent(now)]
        return json_response(body)

    async def _exposures(self, request: Request) -> Response:
        session = self._session(request)
        body = await _parse(request, ExposuresIn, self.counters)
        now = self.clock()
        added = self.state.record(
            (
                Exposure(e.id, e.offer_id, e.campaign_id, e.device_id or session.device_id, e.at)
                for e in body.exposures
            ),
            now,
        )
        hold = self.state.hold(session.device_id, now)
        log_ = [e.to_wire() for e in self.state.recent(now)]
        return json_response({"added": added, "hold": hold.to_wire(), "log": log_})

    async def _rank(self, request: Request) -> Response:
        """A thin device's candidates (`agent.decide.remote.RankRequest`, its wire) scored with
        this device's model and the household's context (used only when the request says the
        thin device may be personalized: `rank_for`)."""
        session = self._session(request)
        if "appliance" in session.roles and len(session.roles) == 1:
            raise HTTPError(403, "appliances report, they do not rank")
        if self.ranker is None:
            raise HTTPError(501, "this coordinator has no model")
        try:
            asked = parse_request(json.loads(await request.read()))
        except (ValueError, RemoteRankError) as exc:
            self.counters["household_bad_requests"] += 1
            raise HTTPError(400, f"{request.path}: {exc}"[:500]) from exc
        asked = dataclasses.replace(asked, device_id=session.device_id)  # who it is, not says
        try:
            result = await self.ranker(asked, self.state.snapshot(self.clock()))
        except ScoringError as exc:
            self.counters["household_rank_failed"] += 1
            log.warning("ranking for %s failed: %s", session.device_id, exc)
            raise HTTPError(503, "the model failed") from exc
        self.counters["household_ranked"] += 1
        return json_response(result.to_wire())


def _not_coordinator() -> Response:
    return json_response({"error": "not_coordinator"}, status=409)


async def _parse(request: Request, model: type[M], counters: Counter[str]) -> M:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        counters["household_bad_requests"] += 1
        raise HTTPError(400, f"{request.path}: {exc.errors()[:3]}") from exc


def peer_membership(obj: Any, verifier: Verifier, household_id: str) -> Membership:
    """A coordinator's membership as its hello showed it (raises MembershipError)."""
    return check_membership(obj, verifier, household_id=household_id)
