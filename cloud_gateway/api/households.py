"""The household routes: issue a device's signed membership of a household, or a one-time
invite a new device redeems at provisioning (issue 17)."""

from __future__ import annotations

from aiohttp import web

from cloud_gateway.api.context import ctx, json_response, read_body, who
from cloud_gateway.api.routes import Route
from cloud_gateway.households.service import HOUSEHOLD_PATTERN, InviteIn, MemberIn

TAGS = ("households",)


async def add_member(request: web.Request) -> web.Response:
    """201 the membership credential the gateway signed (audited): household id, device id,
    device key, roles, the household's secret, expiry."""
    household_id = request.match_info["id"]
    spec = await read_body(request, MemberIn, "the member is invalid")
    credential = await ctx(request).households.issue(household_id, spec, who(request))
    return json_response(credential, status=201)


async def add_invite(request: web.Request) -> web.Response:
    """201 a one-time invite to the household (audited): its code, shown only now, the roles
    the device will hold and its expiry. The owner's app hands the code to the new device,
    which redeems it at provisioning (`household` of `POST /v1/provision`)."""
    household_id = request.match_info["id"]
    spec = await read_body(request, InviteIn, "the invite is invalid")
    invite = await ctx(request).households.invite(household_id, spec, who(request))
    return json_response(invite, status=201)


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
    Route(
        "post",
        "/v1/households/{id}/invites",
        add_invite,
        "Invite a new device to a household: a one-time code it redeems at provisioning",
        body=InviteIn,
        responses={201: "OK"},
        tags=TAGS,
        patterns={"id": HOUSEHOLD_PATTERN},
        scope="devices",
    ),
)
