"""The social routes (issue 19): operators' figures of group buys and price cuts per offer,
and a price cut's published schedule for given terms (the dashboard's form shows it)."""

from __future__ import annotations

import re
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from cloud_gateway.api.context import ctx, json_response, validated
from cloud_gateway.api.errors import ApiProblem
from cloud_gateway.api.routes import Route
from cloud_gateway.db.social import cut_figures, group_figures
from cloud_gateway.social.rules import cut_schedule
from protocol.envelopes import CutTerms, Finite

TAGS = ("social",)
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
CAMPAIGN = (
    "campaign",
    "the campaign whose offers to count (required)",
    {"type": "string", "pattern": ID_PATTERN},
)


class GroupFigures(BaseModel):
    """One group-buy offer: groups open, formed and expired; seats held, granted, released."""

    model_config = ConfigDict(extra="forbid")

    offer_id: str
    groups: int
    open: int
    formed: int
    expired: int
    seats_open: int
    seats_granted: int
    seats_released: int


class CutFigures(BaseModel):
    """One price-cut offer: cuts open, done and expired; helps taken and refused (by why);
    the lowest and mean price reached."""

    model_config = ConfigDict(extra="forbid")

    offer_id: str
    cuts: int
    open: int
    done: int
    expired: int
    helps: int
    helps_refused: dict[str, int]
    lowest_price: float
    mean_price: float


class GroupReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign: str
    offers: Annotated[list[GroupFigures], Field(max_length=1000)]


class CutReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign: str
    offers: Annotated[list[CutFigures], Field(max_length=1000)]


class ScheduleQuery(BaseModel):
    """`GET /v1/social/cut-schedule`: an offer's price and its cut's floor and helps, checked
    as the campaign's offer checks them (`CutTerms`, floor below the price)."""

    model_config = ConfigDict(extra="forbid")

    price: Annotated[Finite, Field(ge=0, le=1e9)]
    floor: Annotated[Finite, Field(ge=0, le=1e9)]
    helps: Annotated[int, Field(ge=1, le=100)]


class CutSchedule(BaseModel):
    """The price after each help: `prices[k]` after k helps, `prices[0]` the offer's price,
    the last the floor."""

    model_config = ConfigDict(extra="forbid")

    prices: Annotated[list[float], Field(max_length=101)]


async def schedule(request: web.Request) -> web.Response:
    q = validated(ScheduleQuery, dict(request.query), "the cut's terms are invalid")
    terms = CutTerms(floor=q.floor, helps=q.helps, window_s=60)  # ScheduleQuery's bounds hold
    if terms.floor >= q.price:
        errors = [{"loc": "floor", "msg": f"must be below the offer's price {q.price}"}]
        raise ApiProblem(
            400, "Bad Request", "the cut's floor is not below its price", errors=errors
        )
    prices = cut_schedule(q.price, terms.floor, terms.helps)
    return json_response(CutSchedule(prices=list(prices)).model_dump())


def _campaign(request: web.Request) -> str:
    campaign = request.query.get("campaign", "")
    if not re.fullmatch(ID_PATTERN, campaign):
        raise ApiProblem(400, "Bad Request", f"query parameter campaign must match {ID_PATTERN}")
    return campaign


async def groups(request: web.Request) -> web.Response:
    campaign = _campaign(request)
    await ctx(request).campaigns.get(campaign)  # 404 for an unknown campaign
    rows = await ctx(request).db.call(group_figures, campaign)
    report = GroupReport(
        campaign=campaign,
        offers=[GroupFigures.model_validate({k: v or 0 for k, v in r.items()}) for r in rows],
    )
    return json_response(report.model_dump())


async def cuts(request: web.Request) -> web.Response:
    campaign = _campaign(request)
    await ctx(request).campaigns.get(campaign)
    rows = await ctx(request).db.call(cut_figures, campaign)
    offers = [
        CutFigures.model_validate(
            {**{k: v or 0 for k, v in r.items()}, "helps_refused": r["helps_refused"]}
        )
        for r in rows
    ]
    return json_response(CutReport(campaign=campaign, offers=offers).model_dump())


ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/v1/social/groups",
        groups,
        "Group buys of a campaign per offer: formed, expired, seats",
        responses={200: GroupReport, 404: "No such campaign"},
        tags=TAGS,
        query=(CAMPAIGN,),
    ),
    Route(
        "get",
        "/v1/social/cuts",
        cuts,
        "Price cuts of a campaign per offer: helps (taken, refused) and prices reached",
        responses={200: CutReport, 404: "No such campaign"},
        tags=TAGS,
        query=(CAMPAIGN,),
    ),
    Route(
        "get",
        "/v1/social/cut-schedule",
        schedule,
        "A price cut's published schedule: the price after each help, for given terms",
        responses={200: CutSchedule},
        tags=TAGS,
        query=(
            ("price", "the offer's price", {"type": "number", "minimum": 0}),
            ("floor", "the cut's floor, below the price", {"type": "number", "minimum": 0}),
            ("helps", "helps to reach the floor", {"type": "integer", "minimum": 1}),
        ),
    ),
)
