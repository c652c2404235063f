"""The member routes (issue 19): members, their devices, points in and out, the ledger and
per-tier figures, member erasure, and each campaign's points rule."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cloud_gateway.api.context import ctx, json_response, read_body, who
from cloud_gateway.api.routes import Route
from cloud_gateway.members.service import (
    MEMBER_PATTERN,
    EntryIn,
    LinkIn,
    MemberIn,
    RuleIn,
)

TAGS = ("members",)


def _id(request: web.Request) -> str:
    return request.match_info["id"]


async def create_member(request: web.Request) -> web.Response:
    spec = await read_body(request, MemberIn, "the member is invalid")
    return json_response(await ctx(request).members.create(spec, who(request)), status=201)


async def list_members(request: web.Request) -> web.Response:
    return json_response({"members": await ctx(request).members.all()})


async def get_member(request: web.Request) -> web.Response:
    desk = ctx(request).members
    member: dict[str, Any] = await desk.get(_id(request))
    member["entries"] = await desk.entries(_id(request))
    return json_response(member)


async def link_device(request: web.Request) -> web.Response:
    spec = await read_body(request, LinkIn, "the device is invalid")
    return json_response(await ctx(request).members.link(_id(request), spec, who(request)))


async def post_points(request: web.Request) -> web.Response:
    spec = await read_body(request, EntryIn, "the entry is invalid")
    answer = await ctx(request).members.post(_id(request), spec, who(request))
    return json_response(answer, status=201 if answer["new"] else 200)


async def erase_member(request: web.Request) -> web.Response:
    return json_response(await ctx(request).members.erase(_id(request), who(request)))


async def tiers(request: web.Request) -> web.Response:
    return json_response(await ctx(request).members.figures())


async def set_rule(request: web.Request) -> web.Response:
    spec = await read_body(request, RuleIn, "the points rule is invalid")
    return json_response(await ctx(request).members.set_rule(_id(request), spec, who(request)))


ID = {"id": MEMBER_PATTERN}
ROUTES: tuple[Route, ...] = (
    Route(
        "post",
        "/v1/members",
        create_member,
        "Create a member (a pseudonymous id, optionally its household)",
        body=MemberIn,
        responses={201: "OK", 409: "The id exists"},
        tags=TAGS,
        scope="campaigns",
    ),
    Route("get", "/v1/members", list_members, "Members", responses={200: "OK"}, tags=TAGS),
    Route(
        "get",
        "/v1/members/tiers",
        tiers,
        "Per tier: members, points issued and spent; the ledger's totals",
        responses={200: "OK"},
        tags=TAGS,
    ),
    Route(
        "get",
        "/v1/members/{id}",
        get_member,
        "One member: tier, balance, devices, latest ledger entries",
        responses={200: "OK"},
        tags=TAGS,
        patterns=ID,
    ),
    Route(
        "post",
        "/v1/members/{id}/devices",
        link_device,
        "Link a device the member owns (it receives the member's signed tier and balance)",
        body=LinkIn,
        responses={200: "OK"},
        tags=TAGS,
        patterns=ID,
        scope="campaigns",
    ),
    Route(
        "post",
        "/v1/members/{id}/points",
        post_points,
        "Credit (purchase, grant) or spend points, once per source key",
        body=EntryIn,
        responses={
            201: "OK",
            200: "The source key was used before: nothing changed",
            409: "A spend the balance does not cover",
        },
        tags=TAGS,
        patterns=ID,
        scope="campaigns",
    ),
    Route(
        "delete",
        "/v1/members/{id}",
        erase_member,
        "Erase a member: the person goes, the ledger's totals stay",
        responses={200: "OK"},
        tags=TAGS,
        patterns=ID,
        scope="devices",
    ),
    Route(
        "put",
        "/v1/campaigns/{id}/points",
        set_rule,
        "The points an attributed conversion of the campaign credits its device's member",
        body=RuleIn,
        responses={200: "OK"},
        tags=("members", "campaigns"),
        scope="campaigns",
    ),
)
