"""The routes the dashboard's pages use, over real HTTP on the composition root's app (no
broker): trends and their `hours`, the audience preview, and editing a draft, with the
field-level errors the form shows next to its fields."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cloud_gateway.config import GatewaySettings
from cloud_gateway.db.backend import Session
from cloud_gateway.db.campaigns import change_campaign, get_campaign
from cloud_gateway.db.open import open_backend
from cloud_gateway.runtime.build import Parts, build
from cloud_gateway.security.auth import create_token
from cloud_gateway.security.keys import load_or_create
from cloud_gateway.social.rules import cut_schedule
from protocol.ids import utcnow

CAMPAIGN: dict[str, Any] = {
    "name": "Filter week",
    "cohorts": ["all"],
    "offers": [
        {
            "id": "filter-20",
            "type": "replenishment",
            "title": "Filter -20%",
            "category": "purifier_filter",
            "surfaces": ["tv_home_banner"],
        }
    ],
}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Parts]]:
    """An authorised client of the composition root's app, and its parts."""
    settings = GatewaySettings(broker="mqtt://127.0.0.1:9", data_dir=tmp_path, http_port=0)
    keys = await asyncio.to_thread(load_or_create, settings.data_dir, settings.topic_root)
    backend = await open_backend(settings, utcnow).open()
    token = await asyncio.to_thread(create_token, settings.data_dir)
    try:
        parts = build(settings, clock=utcnow, backend=backend, keys=keys)
        async with TestClient(
            TestServer(parts.http.app), headers={"Authorization": f"Bearer {token}"}
        ) as client:
            yield client, parts
    finally:
        await backend.close()


def _go_live(store: Session, campaign_id: str) -> None:
    """As a launch leaves it (its pushes aside: no broker here)."""
    doc = get_campaign(store, campaign_id)
    assert doc is not None
    live = {**doc, "state": "live"}
    change_campaign(store, live, who="t", action="campaign.launch", detail={}, at=utcnow(), owed=())


async def test_trends_preview_and_edit_answer_with_field_errors(
    served: tuple[TestClient[Any, Any], Parts],
) -> None:
    http, parts = served
    created = await http.post("/v1/campaigns", json=CAMPAIGN)
    assert created.status == 201, await created.text()
    cid = (await created.json())["id"]

    trends = await http.get(f"/v1/campaigns/{cid}/trends?hours=3")
    assert trends.status == 200
    body = await trends.json()
    assert body["hours"] == 3 and len(body["series"]) == 3
    assert all(h["impressions"] == 0 and h["ctr"]["n"] == 0 for h in body["series"])
    for bad in ("0", "337", "x", "1e3"):
        resp = await http.get(f"/v1/campaigns/{cid}/trends?hours={bad}")
        assert resp.status == 400, bad
        assert (await resp.json())["errors"][0]["loc"] == "query.hours"
    assert (await http.get("/v1/campaigns/nope/trends")).status == 404

    preview = await http.post("/v1/campaigns/audience", json={"cohorts": ["all"]})
    assert await preview.json() == {"devices": 0, "held_out": 0, "registered": 0}
    resp = await http.post(
        "/v1/campaigns/audience",
        json={"cohorts": ["profile:tv", "profile:nope"], "holdout": 0.9},
    )
    assert resp.status == 400
    assert [e["loc"] for e in (await resp.json())["errors"]] == ["holdout"]
    resp = await http.post("/v1/campaigns/audience", json={"cohorts": ["profile:nope"]})
    assert resp.status == 400
    errors = (await resp.json())["errors"]
    assert errors[0]["loc"] == "cohorts.0" and "profile:tv" in errors[0]["msg"]  # known ones

    bad_offer = {**CAMPAIGN["offers"][0], "stock": 5}  # stock without `limited`
    resp = await http.put(f"/v1/campaigns/{cid}", json={**CAMPAIGN, "offers": [bad_offer]})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["loc"] == "offers.0"
    edited = await http.put(f"/v1/campaigns/{cid}", json={**CAMPAIGN, "name": "Filter month"})
    assert edited.status == 200, await edited.text()
    doc = await edited.json()
    assert (doc["id"], doc["name"], doc["state"]) == (cid, "Filter month", "draft")
    assert doc["audience"]["registered"] == 0
    assert (await (await http.get(f"/v1/campaigns/{cid}")).json())["name"] == "Filter month"

    other = await http.post(
        "/v1/campaigns", json={**CAMPAIGN, "offers": [{**CAMPAIGN["offers"][0], "id": "o-2"}]}
    )
    taken = await http.put(f"/v1/campaigns/{(await other.json())['id']}", json=CAMPAIGN)
    assert taken.status == 409  # filter-20 is the first campaign's
    audit = await (await http.get("/v1/audit")).json()
    assert [e["action"] for e in audit["entries"]][:2] == ["campaign.create", "campaign.edit"]
    await parts.db.call(_go_live, cid)
    late = await http.put(f"/v1/campaigns/{cid}", json=CAMPAIGN)
    assert late.status == 409
    assert "only a draft can be edited" in (await late.json())["detail"]


async def test_the_cut_schedule_the_form_shows_is_the_published_one_or_field_errors(
    served: tuple[TestClient[Any, Any], Parts],
) -> None:
    client, _ = served
    resp = await client.get("/v1/social/cut-schedule", params={"price": "100", "floor": "60",
                                                              "helps": "2"})  # fmt: skip
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["prices"] == list(cut_schedule(100, 60, 2)) == [100, 73.34, 60]
    for query, loc in (
        ({"price": "100", "floor": "100", "helps": "2"}, "floor"),  # not below the price
        ({"price": "100", "floor": "60", "helps": "0"}, "helps"),
        ({"price": "NaN", "floor": "60", "helps": "2"}, "price"),
        ({"price": "100", "floor": "60"}, "helps"),
        ({"price": "100", "floor": "60", "helps": "2", "extra": "1"}, "extra"),
    ):
        bad = await client.get("/v1/social/cut-schedule", params=query)
        assert bad.status == 400, query
        assert [e["loc"] for e in (await bad.json())["errors"]] == [loc], query
