"""The household routes: issue a device's signed membership of a household (issue 17)."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web
from pydantic import ValidationError

from cloud_gateway.api.context import ctx, json_response, read_json, who
from cloud_gateway.api.errors import ApiProblem
from cloud_gateway.api.routes import Route
from cloud_gateway.households.service import HOUSEHOLD_PATTERN, MemberIn
from protocol.codec import field_errors

TAGS = ("households",)


async def add_member(request: web.Request) -> web.Response:
    """201 the membership credential the gateway signed (audited): household id, device id,
    device key, roles, the household's secret, expiry."""
    household_id = request.match_info["id"]
    try:
        spec = MemberIn.model_validate(await read_json(request))
        raw = base64.b64decode(spec.device_key, validate=True)
    except ValidationError as exc:
        raise ApiProblem(
            400, "Bad Request", "the member is invalid", errors=field_errors(exc)
        ) from exc
    except (binascii.Error, ValueError) as exc:
        raise ApiProblem(400, "Bad Request", f"device_key is not base64: {exc}") from exc
    if len(raw) != 32:
        raise ApiProblem(400, "Bad Request", f"device_key is {len(raw)} bytes, not 32")
    credential = await ctx(request).households.issue(household_id, spec, who(request))
    return json_response(credential, status=201)


ROUTES: tuple[Route, ...] = (
    Route(
        "post",
        "/v1/households/{id}/members",
        add_member,
        "Add a device to a household: its membership credential, signed by the gateway",
        body=MemberIn,
        responses={201: "OK"},
        tags=TAGS,
        patterns={"id": HOUSEHOLD_PATTERN},
        scope="devices",
    ),
)
