"""The live-sale routes (issue 19): create a campaign of waves, its figures per wave, and
stock added or pulled during the sale."""

from __future__ import annotations

from aiohttp import web

from cloud_gateway.api.context import ctx, json_response, read_body, who
from cloud_gateway.api.routes import Route
from cloud_gateway.campaigns.waves import LiveSaleIn, StockIn
from cloud_gateway.db.sale_figures import sold_out_at

TAGS = ("live-sales",)


async def create_sale(request: web.Request) -> web.Response:
    spec = await read_body(request, LiveSaleIn, "the live sale is invalid")
    return json_response(await ctx(request).waves.create(spec, who(request)), status=201)


async def get_sale(request: web.Request) -> web.Response:
    campaign_id = request.match_info["id"]
    waves = await ctx(request).waves.waves(campaign_id)
    gone = [o["offer_id"] for w in waves for o in w["offers"] if o.get("sold_out")]
    when = await ctx(request).db.call(sold_out_at, campaign_id, gone)
    for wave in waves:  # each offer: when it sold out (None while it has stock)
        for offer in wave["offers"]:
            offer["sold_out_at"] = when.get(offer["offer_id"])
    return json_response({"campaign_id": campaign_id, "waves": waves})


async def change_stock(request: web.Request) -> web.Response:
    spec = await read_body(request, StockIn, "the stock change is invalid")
    answer = await ctx(request).waves.change_stock(request.match_info["id"], spec, who(request))
    return json_response(answer)


ROUTES: tuple[Route, ...] = (
    Route(
        "post",
        "/v1/live-sales",
        create_sale,
        "Create a live sale: a draft campaign whose offers open in waves, each with its stock",
        body=LiveSaleIn,
        responses={201: "OK"},
        tags=TAGS,
        scope="campaigns",
    ),
    Route(
        "get",
        "/v1/live-sales/{id}",
        get_sale,
        "A live sale's waves: each offer's stock, taken and left, sold out or not, and when",
        responses={200: "OK"},
        tags=TAGS,
    ),
    Route(
        "post",
        "/v1/live-sales/{id}/stock",
        change_stock,
        "Add (delta > 0) or pull (delta < 0) coupons of a wave's offer during the sale",
        body=StockIn,
        responses={200: "OK"},
        tags=TAGS,
        scope="campaigns",
    ),
)
