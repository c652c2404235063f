"""Targeting on what real agents report: phones in aggregate mode (hourly counts only) send
usage, consumable levels and member tiers; a campaign's rules reach exactly the devices they
select, and a device that reported nothing is not taken for one that bought nothing.
Real Mosquitto, gateway and agents in this process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.runtime.agent import Agent
from cloud_gateway.campaigns.model import CampaignIn
from cloud_gateway.db.devices import device_facts, get_device
from cloud_gateway.db.pushes import pushed_devices
from simulators.brokers import MosquittoProcess
from tests.support.builders import ALL
from tests.support.clock import FakeClock
from tests.support.gateway_world import agent_settings, export, gateway
from tests.support.waiting import eventually

DAY = 86_400.0
OFFER = {
    "type": "replenishment",
    "title": "Filter -20%",
    "category": "purifier_filter",
    "discount": 0.2,
    "surfaces": ["phone_notification"],
}
# device -> (consent, [(days ago, signals)]); levels and tiers in the order reported.
USAGE: dict[str, tuple[bool, list[tuple[float, list[dict[str, Any]]]]]] = {
    "ph-bought-long-ago": (
        True,
        [
            (45, [{"kind": "purchase", "attrs": {"category": "appliances", "amount": 99}}]),
            (
                1,
                [
                    {
                        "kind": "consumable_level",
                        "attrs": {"category": "purifier_filter", "level": 0.9},
                    }
                ],
            ),
            (
                0,
                [
                    {
                        "kind": "consumable_level",
                        "attrs": {"category": "purifier_filter", "level": 0.2},
                    }
                ],
            ),
            (0, [{"kind": "member_tier", "attrs": {"tier": 3}}]),
        ],
    ),
    "ph-never-bought": (
        True,
        [
            (0, [{"kind": "app_open", "attrs": {"app": "store", "category": "games"}}] * 3),
            (
                0,
                [
                    {
                        "kind": "consumable_level",
                        "attrs": {"category": "purifier_filter", "level": 0.3},
                    }
                ],
            ),
            (0, [{"kind": "member_tier", "attrs": {"tier": 2}}]),
        ],
    ),
    "ph-bought-lately": (
        True,
        [
            (3, [{"kind": "purchase", "attrs": {"category": "appliances", "amount": 10}}]),
            (
                0,
                [
                    {
                        "kind": "consumable_level",
                        "attrs": {"category": "purifier_filter", "level": 0.1},
                    }
                ],
            ),
            (0, [{"kind": "member_tier", "attrs": {"tier": 3}}]),
        ],
    ),
    "ph-low-tier": (
        True,
        [
            (
                0,
                [
                    {
                        "kind": "consumable_level",
                        "attrs": {"category": "purifier_filter", "level": 0.1},
                    }
                ],
            ),
            (0, [{"kind": "member_tier", "attrs": {"tier": 1}}]),
        ],
    ),
    "ph-refilled": (
        True,
        [
            (
                2,
                [
                    {
                        "kind": "consumable_level",
                        "attrs": {"category": "purifier_filter", "level": 0.1},
                    }
                ],
            ),
            (
                0,
                [
                    {
                        "kind": "consumable_level",
                        "attrs": {"category": "purifier_filter", "level": 0.8},
                    }
                ],
            ),
            (0, [{"kind": "member_tier", "attrs": {"tier": 3}}]),
        ],
    ),
    "ph-silent": (False, [(0, [{"kind": "app_open", "attrs": {"category": "games"}}])]),
}


def acked(agent: Agent) -> Callable[[], bool]:
    """A check that `agent` has nothing left unacknowledged, bound to this agent now."""
    return lambda: agent.store.depth == 0


async def test_real_agents_in_aggregate_mode_are_targeted_on_what_they_report(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    async with gateway(tmp_path, mosquitto) as gw:
        agents: dict[str, Agent] = {}
        try:
            for device, (consent, steps) in USAGE.items():
                clock = FakeClock()
                settings = agent_settings(gw, tmp_path, mosquitto, device=device, profile="phone")
                assert settings.profile.uplink.mode == "aggregate"
                agent = agents[device] = await Agent(settings, clock=clock).__aenter__()
                assert await agent.wait_connected(20)
                await agent.set_consent(
                    ALL if consent else {**ALL, "analytics": False, "personalization": False}
                )
                for days_ago, signals in steps:
                    clock.offset = -days_ago * DAY
                    await agent.accept_signals(signals)
                    if consent:  # without analytics consent nothing leaves the device
                        await eventually(acked(agent), what=f"{device} acked")
                clock.offset = 0.0

            async def all_known() -> bool:
                """ph-silent sends nothing but its birth: wait until the gateway has it."""
                return all([await gw.db.call(get_device, d) is not None for d in USAGE])

            await eventually(all_known, what="every agent's birth recorded")
            exp = await export(gw, "ph-bought-long-ago")
            assert (
                exp["signals"] == [] and exp["aggregates"]
            )  # aggregates only, as the profile says
            facts = {f.device_id: f for f in await gw.db.call(device_facts)}
            assert facts["ph-bought-long-ago"].levels == {"purifier_filter": 0.2}  # the latest
            assert facts["ph-refilled"].levels == {"purifier_filter": 0.8}
            assert facts["ph-low-tier"].member_tier == 1
            assert not facts["ph-silent"].has_data

            async def launch(spec: dict[str, Any]) -> set[str]:
                campaign = await gw.campaigns.create(CampaignIn.model_validate(spec), "test")
                await gw.campaigns.launch(campaign.id, "test")
                return set(await gw.db.call(pushed_devices, campaign.id))

            loyal_needing_filter = await launch(
                {
                    "name": "Filters for loyal members who need one",
                    "cohorts": ["profile:phone"],
                    "targeting": {
                        "member_tiers": [2, 3],
                        "rules": [
                            {"kind": "no_purchase", "category": "appliances", "days": 30},
                            {
                                "kind": "consumable_below",
                                "category": "purifier_filter",
                                "level": 0.5,
                            },
                        ],
                    },
                    "offers": [{**OFFER, "id": "filter-loyal"}],
                }
            )
            assert loyal_needing_filter == {"ph-bought-long-ago", "ph-never-bought"}
            no_purchase = await launch(
                {
                    "name": "Win back",
                    "cohorts": ["profile:phone"],
                    "targeting": {
                        "rules": [{"kind": "no_purchase", "category": "appliances", "days": 30}]
                    },
                    "offers": [{**OFFER, "id": "win-back"}],
                }
            )
            assert no_purchase == {
                "ph-bought-long-ago",
                "ph-never-bought",
                "ph-low-tier",
                "ph-refilled",
            }  # not the recent buyer, not the device that reported nothing

            async def delivered() -> bool:
                stats = await gw.campaigns.list()
                done = 0
                for c in stats:
                    done += (await gw.campaigns.stats(c.id)).model_dump()["delivered"]
                return done == len(loyal_needing_filter) + len(no_purchase)

            await eventually(delivered, what="every selected agent verified and stored its bundle")
            for device, agent in agents.items():  # and each holds exactly what it was selected for
                assert agent.offers is not None
                held = {o.id for o in agent.offers.offers()}
                expect = {"filter-loyal"} if device in loyal_needing_filter else set()
                expect |= {"win-back"} if device in no_purchase else set()
                assert held == expect, device
        finally:
            for agent in agents.values():
                await agent.__aexit__(None, None, None)
