"""The policy routes (issue 18): operators set caps, quiet hours and holdout per profile,
cohort or campaign; each change is audited, signed and published to devices."""

from __future__ import annotations

from aiohttp import web

from cloud_gateway.api.context import ctx, json_response, read_body, who
from cloud_gateway.api.routes import Route
from cloud_gateway.campaigns.policy import SCOPES, PolicyList
from protocol.envelopes import PolicyRules

TAGS = ("policies",)
PATTERNS = {"scope": "^(" + "|".join(SCOPES) + ")$", "name": r"^[A-Za-z0-9_.:-]{1,64}$"}


async def put_policy(request: web.Request) -> web.Response:
    rules = await read_body(request, PolicyRules, "the policy is invalid")
    scope, name = request.match_info["scope"], request.match_info["name"]
    listing = await ctx(request).campaigns.policies.put(scope, name, rules, who(request))
    return json_response(listing.model_dump(mode="json"))


async def delete_policy(request: web.Request) -> web.Response:
    scope, name = request.match_info["scope"], request.match_info["name"]
    listing = await ctx(request).campaigns.policies.delete(scope, name, who(request))
    return json_response(listing.model_dump(mode="json"))


async def list_policies(request: web.Request) -> web.Response:
    listing = await ctx(request).campaigns.policies.listing()
    return json_response(listing.model_dump(mode="json"))


ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/v1/policies",
        list_policies,
        "The policies, the version published last and the versions devices run",
        responses={200: PolicyList},
        tags=TAGS,
    ),
    Route(
        "put",
        "/v1/policies/{scope}/{name}",
        put_policy,
        "Set the caps, quiet hours and holdout of a profile, cohort or campaign; publish",
        body=PolicyRules,
        responses={200: PolicyList},
        tags=TAGS,
        patterns=PATTERNS,
        scope="campaigns",
    ),
    Route(
        "delete",
        "/v1/policies/{scope}/{name}",
        delete_policy,
        "Remove a policy; publish (devices go back to the layer below)",
        responses={200: PolicyList},
        tags=TAGS,
        patterns=PATTERNS,
        scope="campaigns",
    ),
)
