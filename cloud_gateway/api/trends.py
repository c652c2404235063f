"""The campaign trend route: impressions, clicks and conversions per hour, with intervals."""

from __future__ import annotations

from aiohttp import web

from cloud_gateway.api.context import ctx, json_response
from cloud_gateway.api.errors import ApiProblem
from cloud_gateway.api.routes import Route
from cloud_gateway.campaigns.trends import DEFAULT_HOURS, MAX_HOURS, CampaignTrends

TAGS = ("campaigns",)


def _hours(request: web.Request) -> int:
    raw = request.query.get("hours", str(DEFAULT_HOURS))
    try:
        hours = int(raw)
    except ValueError:
        hours = -1
    if not 1 <= hours <= MAX_HOURS:
        raise ApiProblem(
            400,
            "Bad Request",
            f"hours must be an integer in 1..{MAX_HOURS}",
            errors=[{"loc": "query.hours", "msg": f"got {raw[:40]!r}"}],
        )
    return hours


async def campaign_trends(request: web.Request) -> web.Response:
    hours = _hours(request)
    trends = await ctx(request).campaigns.trends(request.match_info["id"], hours)
    return json_response(trends.model_dump(mode="json"))


ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/v1/campaigns/{id}/trends",
        campaign_trends,
        "Impressions, clicks and conversions per hour (UTC), with 95 % intervals of the rates",
        responses={200: CampaignTrends},
        tags=TAGS,
        query=(
            (
                "hours",
                f"hours to return, ending with the current one (1..{MAX_HOURS}, default"
                f" {DEFAULT_HOURS})",
                {"type": "integer", "minimum": 1, "maximum": MAX_HOURS},
            ),
        ),
    ),
)
