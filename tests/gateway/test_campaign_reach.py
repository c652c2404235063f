"""Campaigns that cannot reach anyone: unknown surfaces, categories and cohorts are a 400
listing the known values; create and launch answer with the audience they would reach now;
/openapi.json states its bounds as JSON Schema does (`minimum`/`maximum`)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from cloud_gateway.api.app import TABLES
from cloud_gateway.api.openapi import document
from cloud_gateway.campaigns.model import CampaignIn
from cloud_gateway.campaigns.reach import shipped_vocabulary, unreachable_values
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol import codec
from protocol.envelopes import State
from protocol.vocabulary import LATER_OFFER_TYPES, OFFER_TYPES
from simulators.brokers import MosquittoProcess
from tests.support.builders import CAMPAIGN_OFFER as OFFER
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually


def test_unknown_values_are_named_with_the_known_ones() -> None:
    spec = CampaignIn.model_validate(
        {
            "name": "typos",
            "cohorts": ["all", "profile:toaster"],
            "offers": [{**OFFER, "surfaces": ["tv_home_baner"], "category": "purifier"}],
            "targeting": {"rules": [{"kind": "no_purchase", "category": "gamez", "days": 7}]},
        }
    )
    errors = {e["loc"]: e["msg"] for e in unreachable_values(spec, shipped_vocabulary())}
    assert set(errors) == {
        "cohorts.1",
        "offers.0.surfaces.0",
        "offers.0.category",
        "targeting.rules.0.category",
    }
    assert "unknown surface 'tv_home_baner'; known:" in errors["offers.0.surfaces.0"]
    assert "tv_home_banner" in errors["offers.0.surfaces.0"]
    assert "purifier_filter" in errors["offers.0.category"]
    assert "profile:tv" in errors["cohorts.1"]
    ok = CampaignIn.model_validate({"name": "ok", "cohorts": ["profile:tv"], "offers": [OFFER]})
    assert unreachable_values(ok, shipped_vocabulary()) == []


def test_openapi_bounds_are_minimum_and_maximum() -> None:
    text = json.dumps(document(TABLES))
    for pydantic_only in ('"ge":', '"le":', '"gt":', '"lt":'):
        assert pydantic_only not in text
    holdout = document(TABLES)["components"]["schemas"]["CampaignIn"]["properties"]["holdout"]
    assert (holdout["minimum"], holdout["maximum"]) == (0, 0.5)


@pytest.mark.integration
async def test_create_and_launch_answer_the_audience_and_refuse_the_unreachable(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    settings = gateway_settings(tmp_path, mosquitto)
    async with (
        Gateway(settings) as gw,
        aiohttp.ClientSession() as http,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"r-{uuid.uuid4().hex[:6]}") as dev,
    ):
        token = create_token(settings.data_dir)
        base = f"http://127.0.0.1:{gw.http_port}"
        headers = {"Authorization": f"Bearer {token}"}

        async def post(path: str, body: Any = None) -> tuple[int, Any]:
            async with http.post(base + path, json=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)

        for i, profile in enumerate(["tv", "tv", "phone"]):
            device = f"{profile}-reach-{i:02d}"
            cohorts = ["all", f"profile:{profile}", "region:cn-east"]
            birth = State(device_id=device, status="online", profile=profile, cohorts=cohorts)
            await dev.publish(settings.topics.state(device), codec.encode(birth), qos=1)

        async def registered() -> bool:
            async with http.get(base + "/v1/devices", headers=headers) as resp:
                return len((await resp.json())["devices"]) == 3

        await eventually(registered, 20.0, "three registered devices")

        status, problem = await post(
            "/v1/campaigns",
            {"name": "typo", "cohorts": ["region:cn-west"], "offers": [OFFER]},
        )
        assert status == 400
        [error] = problem["errors"]
        assert error["loc"] == "cohorts.0"
        assert "region:cn-east" in error["msg"]  # a registered device's cohort is known
        assert (
            await post(
                "/v1/campaigns",
                {"name": "x", "cohorts": ["all"], "offers": [{**OFFER, "surfaces": ["billboard"]}]},
            )
        )[0] == 400

        status, created = await post(
            "/v1/campaigns", {"name": "tv", "cohorts": ["profile:tv"], "offers": [OFFER]}
        )
        assert status == 201
        assert created["audience"] == {"devices": 2, "held_out": 0, "registered": 3}
        status, launched = await post(f"/v1/campaigns/{created['id']}/launch")
        assert status == 200 and launched["state"] == "live"
        assert launched["audience"]["devices"] == 2

        status, nobody = await post(
            "/v1/campaigns", {"name": "hub", "cohorts": ["profile:hub"], "offers": [OFFER]}
        )
        assert status == 201
        assert nobody["audience"] == {"devices": 0, "held_out": 0, "registered": 3}
        assert (await post(f"/v1/campaigns/{nobody['id']}/launch"))[0] == 200

        async def stats(cid: str) -> Any:
            async with http.get(f"{base}/v1/campaigns/{cid}/stats", headers=headers) as resp:
                return await resp.json()

        idle = (await stats(nobody["id"]))["idle_reason"]
        assert idle.startswith("none of the 3 registered devices is in its audience")
        assert "profile:hub" in idle
        waiting = (await stats(created["id"]))["idle_reason"]
        assert waiting.startswith("2 device(s) of its audience have not confirmed")
        assert (await stats(f"{created['id']}"))["state"] == "live"


SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "campaigns"


def test_a_sample_campaign_per_offer_type_is_valid_and_reaches_devices() -> None:
    """The samples the README points at: one per offer type, each accepted as it is."""
    kinds: set[str] = set()
    for path in sorted(SAMPLES.glob("*.json")):
        spec = CampaignIn.model_validate(json.loads(path.read_text(encoding="utf-8")))
        assert unreachable_values(spec, shipped_vocabulary()) == [], path.name
        kinds.update(o.type for o in spec.offers)
    assert kinds == set(OFFER_TYPES) | set(LATER_OFFER_TYPES)
    readme = (SAMPLES.parents[1] / "README.md").read_text(encoding="utf-8")
    assert "-d @docs/campaigns/" in readme
    for used in (m.split()[0] for m in readme.split("@docs/campaigns/")[1:]):
        assert (SAMPLES / used).is_file(), used
