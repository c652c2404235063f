"""What the handlers are given: the gateway's parts (`ApiContext`) and small request helpers."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from cloud_gateway.api.errors import ApiProblem
from cloud_gateway.campaigns.service import CampaignService
from cloud_gateway.campaigns.waves import WaveDesk
from cloud_gateway.db.backend import Backend, Session
from cloud_gateway.devices.erasure import DeviceErasure
from cloud_gateway.households.service import HouseholdDesk
from cloud_gateway.ingest.parse import unstorable_value
from cloud_gateway.members.service import MemberDesk
from cloud_gateway.provisioning.service import Provisioner
from cloud_gateway.registry.service import ModelRegistry
from cloud_gateway.security.auth import TokenVerifier
from protocol import codec
from protocol.errors import NonFiniteNumber


@dataclass(frozen=True, slots=True)
class ApiContext:
    """The parts the API serves, each made by the composition root (`runtime/build.py`)."""

    campaigns: CampaignService
    db: Backend[Session]
    verifier: TokenVerifier
    erasure: DeviceErasure
    models: ModelRegistry
    counters: Counter[str]
    registry: CollectorRegistry
    started: float
    gauges: Callable[[], dict[str, int]]
    """Levels read at request time (queue fill), shown beside the counters."""
    readiness: Callable[[], Awaitable[dict[str, Any]]]
    """`/readyz`'s checks (broker link, database writable, loops running)."""
    provisioner: Provisioner
    """Redeems claim credentials (`POST /v1/provision`)."""
    households: HouseholdDesk
    """Signs household memberships (`POST /v1/households/{id}/members`)."""
    members: MemberDesk
    """Members, tiers and points (issue 19)."""
    waves: WaveDesk
    """Live-sale waves (issue 19)."""


CTX = web.AppKey("ctx", ApiContext)
OPENAPI = web.AppKey("openapi", dict[str, Any])
"""The served `/openapi.json`, generated from the route tables when the app is built."""
TOKEN_ID = web.RequestKey("token_id", str)
Body = TypeVar("Body", bound=BaseModel)


def ctx(request: web.Request) -> ApiContext:
    return request.app[CTX]


def who(request: web.Request) -> str:
    """The audit name of the caller: `token:<id>`."""
    return f"token:{request[TOKEN_ID]}"


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def read_json(request: web.Request) -> Any:
    """The request's body as JSON, every number in it finite (`codec.loads_finite`); a 400
    naming the field otherwise."""
    raw = await request.read()  # aiohttp enforces client_max_size: 413 past it
    return parse_json(raw)


async def read_body(request: web.Request, model: type[Body], invalid: str) -> Body:
    """The request's JSON body validated as `model`; a 400 with the detail `invalid` (say "the
    campaign is invalid") naming each bad field otherwise."""
    return validated(model, await read_json(request), invalid)


def validated(model: type[Body], data: Any, invalid: str) -> Body:
    """`data` from a caller (a parsed body, a query) as `model`: every route answers a
    `ValidationError` alike, a 400 with the detail `invalid` and the bad fields (at most 20)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiProblem(400, "Bad Request", invalid, errors=codec.field_errors(exc)) from exc


def parse_json(raw: bytes, what: str = "the body") -> Any:
    """JSON from a caller, read once by `codec.loads_finite`: `NaN`, infinities and numbers
    past 64 bits are a 400 naming the field (`offers.0.price`), like any JSON error."""
    try:
        return codec.loads_finite(raw)
    except NonFiniteNumber as exc:
        raise ApiProblem(
            400,
            "Bad Request",
            f"{what}: {exc}",
            errors=[{"loc": exc.path, "msg": f"{exc.literal} is not a finite number"}],
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiProblem(400, "Bad Request", f"{what} is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise ApiProblem(400, "Bad Request", f"{what} nests too deeply") from exc


def check_storable(body: BaseModel, what: str) -> None:
    """A 400 naming the field of a validated body that no store can hold: a time that cannot
    be moved to UTC (year 1 east of UTC, year 9999 west of it), a string with a NUL
    character. pydantic accepts both; storing them would fail (a 500)."""
    found = unstorable_value(body)
    if found is not None:
        path, why = found
        raise ApiProblem(
            400, "Bad Request", f"{what} is invalid", errors=[{"loc": path, "msg": why}]
        )
