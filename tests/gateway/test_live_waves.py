"""A live-sale wave end to end on a real broker (issue 19): three agents whose clocks are
-2 s, 0 and +2 s off hold the sealed wave from the launch and reveal it at the second on the
gateway's clock; the claim that takes the last coupon makes the gateway broadcast the cohort's
signed sold-out notice, and the third device stops claiming within a second (no claim
reaches the gateway); stock added during the sale reopens it. On the same setup, members:
a conversion credits its member once, the device ranks with the signed tier it receives, a
member's erasure drops it and keeps the ledger's totals."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.offers.claims import NotClaimable
from agent.runtime.agent import Agent
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol.ids import format_time, utcnow
from simulators.brokers import MosquittoProcess
from tests.support import waiting
from tests.support.gateway_world import agent_settings, gateway_settings

pytestmark = pytest.mark.integration

eventually = partial(waiting.eventually, timeout=20.0, step=0.01)
ALL = {"analytics": True, "personalization": True, "marketing": True}
SURFACE = "tv_home_banner"
SKEWS = (-2.0, 0.0, 2.0)
WAVE_IN_S = 7.0
"""The wave opens this long after the sale is created (the gateway's time sample goes out
5 s before it: agents must be connected by then)."""


def wave_offer(oid: str, stock: int) -> dict[str, Any]:
    return {
        "id": oid,
        "type": "coupon",
        "title": f"Live drop {oid}",
        "category": "appliances",
        "discount": 0.5,
        "surfaces": [SURFACE],
        "limited": True,
        "stock": stock,
    }


async def test_a_wave_reveals_at_the_second_and_sold_out_stops_claims(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    settings = gateway_settings(tmp_path, mosquitto)
    async with Gateway(settings) as gw, contextlib.AsyncExitStack() as stack:
        token = await asyncio.to_thread(create_token, settings.data_dir)
        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
            )
        )
        agents: list[Agent] = []
        for i, skew in enumerate(SKEWS):
            s = agent_settings(gw, tmp_path, mosquitto, device=f"tv-wave-{i:04d}")
            agent = await stack.enter_async_context(Agent(s, clock=partial(_skewed, skew)))
            await agent.set_consent(ALL)
            agents.append(agent)
        for agent in agents:
            await eventually(agent.parts.link.connected.is_set, what="agents connected")

        wave = utcnow() + timedelta(seconds=WAVE_IN_S)
        later = wave + timedelta(minutes=15)
        spec = {
            "name": "Live drop",
            "cohorts": ["all"],
            "waves": [
                {"at": format_time(wave), "offers": [wave_offer("w1", 2)]},
                {"at": format_time(later), "offers": [wave_offer("w2", 5)]},
            ],
        }
        resp = await http.post("/v1/live-sales", json=spec)
        assert resp.status == 201, await resp.text()
        cid = (await resp.json())["campaign"]["id"]
        assert (await http.post(f"/v1/campaigns/{cid}/launch")).status == 200
        for agent in agents:  # every wave arrives ahead, sealed
            await eventually(partial(_holds, agent, ("w1", "w2")))
        with pytest.raises(NotClaimable, match="sealed"):
            await agents[1].claim("w1")
        pushes_before = gw.counters["bundles_pushed"]

        # reveal: poll every agent until each shows w1; when, on the true clock
        revealed: dict[int, float] = {}
        deadline = wave.timestamp() + 3
        while len(revealed) < len(agents) and time.time() < deadline:
            for i, agent in enumerate(agents):
                if i not in revealed:
                    ranked = (await agent.decide(SURFACE, 3)).ranked
                    if any(r.offer.id == "w1" for r in ranked):
                        revealed[i] = time.time() - wave.timestamp()
            await asyncio.sleep(0.005)
        print("revealed after the wave (s):", revealed)
        assert len(revealed) == len(agents), revealed
        assert all(agent.counters["clock_samples"] >= 1 for agent in agents)
        # each within 0.25 s after the wave (the transit of the sample and the polling),
        # none early, whatever its own clock says
        assert all(-0.01 <= r <= 0.25 for r in revealed.values()), revealed
        assert gw.counters["bundles_pushed"] == pushes_before  # no push at the wave

        # two coupons: the first two devices take them; the last grant sells out
        claims = [(await agent.claim("w1"))[0]["id"] for agent in agents[:2]]
        for agent, claim_id in zip(agents[:2], claims, strict=True):
            await eventually(partial(_state, agent, claim_id, "granted"), what="granted")
        granted_at = time.monotonic()
        third = agents[2]
        await eventually(lambda: "w1" in third.parts.live.sold_out, timeout=2.0)
        assert time.monotonic() - granted_at < 1.0
        received = gw.counters["claims_received"]
        with pytest.raises(NotClaimable, match="sold out"):
            await third.claim("w1")
        assert third.counters["claims_held_sold_out"] == 1
        assert "w1" not in {r.offer.id for r in (await third.decide(SURFACE, 3)).ranked}
        await asyncio.sleep(0.2)
        assert gw.counters["claims_received"] == received  # the crowd stopped at the edge

        # one coupon added during the sale: a new notice without w1, the third claims it
        resp = await http.post(f"/v1/live-sales/{cid}/stock", json={"offer_id": "w1", "delta": 1})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["stock"] == 1
        await eventually(lambda: "w1" not in third.parts.live.sold_out, timeout=2.0)
        claim_id = (await third.claim("w1"))[0]["id"]
        await eventually(lambda: _state(third, claim_id, "granted"), what="third granted")
        figures = await (await http.get(f"/v1/live-sales/{cid}")).json()
        first = figures["waves"][0]["offers"][0]
        assert (first["initial"], first["taken"], first["left"]) == (3, 3, 0)
        assert figures["waves"][1]["offers"][0]["left"] == 5
        bad = await http.post(f"/v1/live-sales/{cid}/stock", json={"offer_id": "w1", "delta": 1.5})
        assert bad.status == 400

        # members on the same fleet: a member owns the first device, its conversion of the
        # wave's coupon credits the campaign's points once, and the device ranks with the
        # signed tier the gateway sends it
        first_agent = agents[0]
        me = first_agent.settings.device_id
        assert (await http.post("/v1/members", json={"id": "m-1"})).status == 201
        resp = await http.post("/v1/members/m-1/devices", json={"device_id": me})
        assert resp.status == 200, await resp.text()
        resp = await http.put(f"/v1/campaigns/{cid}/points", json={"per_conversion": 400})
        assert resp.status == 200, await resp.text()
        await first_agent.record_outcome("w1", "impression", SURFACE)
        await first_agent.record_outcome("w1", "conversion", SURFACE)
        assert await first_agent.drain(timeout=20.0)

        async def balance() -> int:
            member = await (await http.get("/v1/members/m-1")).json()
            return int(member["balance"])

        await eventually(lambda: _equals(balance(), 400), what="the conversion credited")
        grant = {"kind": "grant", "points": 1700, "source": "welcome"}
        assert (await http.post("/v1/members/m-1/points", json=grant)).status == 201
        assert (await http.post("/v1/members/m-1/points", json=grant)).status == 200  # once
        await eventually(
            lambda: first_agent.parts.members.tier_at(utcnow()) == 2, what="gold, signed"
        )
        assert first_agent.parts.members.status is not None
        assert first_agent.parts.members.status.balance == 2100
        figures = await (await http.get("/v1/members/tiers")).json()
        assert figures["totals"]["issued"] == 2100
        spend = {"kind": "spend", "points": 5000, "source": "too-much"}
        assert (await http.post("/v1/members/m-1/points", json=spend)).status == 409
        assert (await http.delete("/v1/members/m-1")).status == 200
        await eventually(lambda: first_agent.parts.members.status is None, what="dropped")
        figures = await (await http.get("/v1/members/tiers")).json()
        assert figures["totals"]["issued"] == 2100 and figures["totals"]["held"] == 0


async def _equals(got: Any, want: object) -> bool:
    return bool(await got == want)


def _skewed(skew: float) -> float:
    return time.time() + skew


def _holds(agent: Agent, ids: tuple[str, ...]) -> bool:
    return all(agent.parts.offers.get(i) is not None for i in ids)


async def _state(agent: Agent, claim_id: str, state: str) -> bool:
    row = await agent.get_claim(claim_id)
    return row is not None and row["state"] == state
