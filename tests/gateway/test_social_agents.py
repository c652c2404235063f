"""A group buy end to end (issue 19): three households' agents and a gateway in this process
on a real broker. One device starts a group of a pushed `group_buy` offer and shows its code;
two other households' devices join with it; every device then shows the group formed, signed,
with a coupon of its own, seats 3 of 3."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from agent.runtime.agent import Agent
from cloud_gateway.campaigns.model import CampaignIn
from protocol.social import normalise_code
from simulators.brokers import MosquittoProcess
from tests.support.gateway_world import agent_settings, gateway
from tests.support.waiting import eventually

OFFER = {
    "id": "grp-e2e",
    "type": "group_buy",
    "title": "Filters for three households",
    "category": "purifier_filter",
    "price": 199.0,
    "surfaces": ["tv_home_banner"],
    "group": {"size": 3, "window_s": 3600, "price": 129.0},
}


async def test_three_households_form_a_group_through_their_devices(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    async with gateway(tmp_path, mosquitto) as gw:
        spec = CampaignIn.model_validate({"name": "e2e", "cohorts": ["all"], "offers": [OFFER]})
        campaign = await gw.campaigns.create(spec, "test")
        await gw.campaigns.launch(campaign.id, "test")
        names = ["tv-grp-0001", "tv-grp-0002", "tv-grp-0003"]
        agents = [Agent(agent_settings(gw, tmp_path, mosquitto, device=n)) for n in names]
        for agent in agents:
            await agent.__aenter__()
        try:
            for agent in agents:
                assert await agent.wait_connected()
                await eventually(partial(agent.parts.offers.get, "grp-e2e"), 20, "the offer")
            first, *others = agents
            started = await first.social_request("group", "start", offer_id="grp-e2e")

            async def answered(agent: Agent, request_id: str) -> dict[str, Any] | None:
                shown = await agent.social_show(request_id)
                return shown if shown is not None and not shown["pending"] else None

            shown = await eventually(lambda: answered(first, started["request_id"]), 20)
            assert shown["status"] == "open"
            assert shown["seats"] == 1
            code = shown["code"]
            typed = f"{code[:4].lower()}-{code[4:]}"  # as a person types it
            for agent in others:
                joined = await agent.social_request("group", "join", code=normalise_code(typed))
                await eventually(partial(answered, agent, joined["request_id"]), 20)
            ref = shown["ref"]

            async def formed(agent: Agent) -> dict[str, Any] | None:
                now = await agent.social_show(ref)
                return now if now is not None and now.get("status") == "formed" else None

            states = [await eventually(partial(formed, a), 20, "formed") for a in agents]
            assert all(s["seats"] == s["size"] == 3 for s in states)
            assert all(s["price"] == 129.0 for s in states)
            assert len({s["coupon"] for s in states}) == 3
            assert all(a.counters["social_states_bad"] == 0 for a in agents)
        finally:
            for agent in agents:
                await agent.__aexit__(None, None, None)
