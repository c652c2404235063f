"""The campaign routes: create, list, read, launch, pause, end, and live results."""

from __future__ import annotations

from aiohttp import web

from cloud_gateway.api.context import check_storable, ctx, json_response, read_body, who
from cloud_gateway.api.routes import Route
from cloud_gateway.api.schemas import CampaignList
from cloud_gateway.campaigns.model import Campaign, CampaignIn
from cloud_gateway.campaigns.reach import Audience, AudienceIn, CampaignReach
from cloud_gateway.campaigns.results import CampaignResults

TAGS = ("campaigns",)
STATE_CONFLICT = "Not allowed in this state"


async def create_campaign(request: web.Request) -> web.Response:
    spec = await read_body(request, CampaignIn, "the campaign is invalid")
    check_storable(spec, "the campaign")
    campaigns = ctx(request).campaigns
    campaign = await campaigns.create(spec, who(request))
    return await _with_audience(request, campaign, status=201)


async def _with_audience(
    request: web.Request, campaign: Campaign, status: int = 200
) -> web.Response:
    """The campaign and whom it would reach now (`CampaignReach`): an operator sees at once
    that a campaign reaches no one."""
    reach = await ctx(request).campaigns.audience(campaign)
    return json_response({**campaign.doc(), "audience": reach.model_dump()}, status=status)


async def edit_campaign(request: web.Request) -> web.Response:
    spec = await read_body(request, CampaignIn, "the campaign is invalid")
    check_storable(spec, "the campaign")
    campaign = await ctx(request).campaigns.edit(request.match_info["id"], spec, who(request))
    return await _with_audience(request, campaign)


async def preview_audience(request: web.Request) -> web.Response:
    spec = await read_body(request, AudienceIn, "the audience is invalid")
    reach = await ctx(request).campaigns.preview(spec)
    return json_response(reach.model_dump())


async def list_campaigns(request: web.Request) -> web.Response:
    campaigns = await ctx(request).campaigns.list()
    return json_response({"campaigns": [c.doc() for c in campaigns]})


async def get_campaign(request: web.Request) -> web.Response:
    campaign = await ctx(request).campaigns.get(request.match_info["id"])
    return json_response(campaign.doc())


async def launch_campaign(request: web.Request) -> web.Response:
    campaign = await ctx(request).campaigns.launch(request.match_info["id"], who(request))
    return await _with_audience(request, campaign)


async def pause_campaign(request: web.Request) -> web.Response:
    campaign = await ctx(request).campaigns.pause(request.match_info["id"], who(request))
    return json_response(campaign.doc())


async def end_campaign(request: web.Request) -> web.Response:
    campaign = await ctx(request).campaigns.end(request.match_info["id"], who(request))
    return json_response(campaign.doc())


async def campaign_stats(request: web.Request) -> web.Response:
    stats = await ctx(request).campaigns.stats(request.match_info["id"])
    return json_response(stats.model_dump(mode="json"))


ROUTES: tuple[Route, ...] = (
    Route(
        "post",
        "/v1/campaigns",
        create_campaign,
        "Create a draft campaign",
        body=CampaignIn,
        responses={201: CampaignReach, 409: "An offer id is taken"},
        tags=TAGS,
        links=(
            ("GetCampaign", "get_v1_campaigns_id"),
            ("LaunchCampaign", "post_v1_campaigns_id_launch"),
            ("PauseCampaign", "post_v1_campaigns_id_pause"),
            ("EndCampaign", "post_v1_campaigns_id_end"),
            ("CampaignStats", "get_v1_campaigns_id_stats"),
            ("EditCampaign", "put_v1_campaigns_id"),
            ("CampaignTrends", "get_v1_campaigns_id_trends"),
        ),
        scope="campaigns",
    ),
    Route(
        "get",
        "/v1/campaigns",
        list_campaigns,
        "List campaigns",
        responses={200: CampaignList},
        tags=TAGS,
    ),
    Route(
        "get",
        "/v1/campaigns/{id}",
        get_campaign,
        "One campaign",
        responses={200: Campaign},
        tags=TAGS,
    ),
    Route(
        "post",
        "/v1/campaigns/{id}/launch",
        launch_campaign,
        "Launch (or schedule, before starts_at): push its offers",
        responses={200: CampaignReach, 409: STATE_CONFLICT},
        tags=TAGS,
        links=(
            ("PauseCampaign", "post_v1_campaigns_id_pause"),
            ("CampaignStats", "get_v1_campaigns_id_stats"),
        ),
        scope="campaigns",
    ),
    Route(
        "post",
        "/v1/campaigns/{id}/pause",
        pause_campaign,
        "Pause: withdraw its offers (signed revocation)",
        responses={200: Campaign, 409: STATE_CONFLICT},
        tags=TAGS,
        links=(
            ("LaunchCampaign", "post_v1_campaigns_id_launch"),
            ("EndCampaign", "post_v1_campaigns_id_end"),
        ),
        scope="campaigns",
    ),
    Route(
        "post",
        "/v1/campaigns/{id}/end",
        end_campaign,
        "End for good: withdraw its offers",
        responses={200: Campaign, 409: STATE_CONFLICT},
        tags=TAGS,
        scope="campaigns",
    ),
    Route(
        "get",
        "/v1/campaigns/{id}/stats",
        campaign_stats,
        "Live results per campaign and variant, with confidence intervals and uplift",
        responses={200: CampaignResults},
        tags=TAGS,
    ),
    Route(
        "put",
        "/v1/campaigns/{id}",
        edit_campaign,
        "Edit a draft campaign: replace its content (its id stays)",
        body=CampaignIn,
        responses={200: CampaignReach, 409: "Not a draft any more, or an offer id is taken"},
        tags=TAGS,
        links=(
            ("LaunchCampaign", "post_v1_campaigns_id_launch"),
            ("CampaignStats", "get_v1_campaigns_id_stats"),
        ),
        scope="campaigns",
    ),
    Route(
        "post",
        "/v1/campaigns/audience",
        preview_audience,
        "Size an audience before creating the campaign: devices its cohorts and targeting"
        " select now, and those its holdout keeps out",
        body=AudienceIn,
        responses={200: Audience},
        tags=TAGS,
        scope="campaigns",
    ),
)
