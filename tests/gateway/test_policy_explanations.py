"""Policy from the cloud and explanations for marketers (issue 18), end to end over a real
Mosquitto, a gateway in this process on each backend (SQLite, PostgreSQL) and real agents:
operators set policies through the API (validated, audited), devices verify and enforce the
signed documents and report the version they run, and the explanations the devices report add
up to the audience: every reached device is shown or counted under exactly one reason."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.runtime.agent import Agent
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.ingest import store_batch
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol.envelopes import Batch, Signal
from protocol.ids import new_id, utcnow
from protocol.vocabulary import EXPLAIN_KIND
from simulators.brokers import MosquittoProcess
from tests.support import waiting
from tests.support.agent_world import http as agent_http
from tests.support.builders import CAMPAIGN_OFFER
from tests.support.gateway_world import agent_settings, device_view, gateway_settings

pytestmark = pytest.mark.integration

eventually = partial(waiting.eventually, timeout=30.0)
ALL = {"analytics": True, "personalization": False, "marketing": True}
ALWAYS_QUIET = [{"start": "00:00", "end": "12:00"}, {"start": "12:00", "end": "00:00"}]
SURFACES = {"tv": "tv_home_banner", "hub": "hub_display"}
FLEET = [  # (device, profile, consent)
    ("tv-pol-0001", "tv", ALL),
    ("tv-pol-0002", "tv", ALL),
    ("tv-pol-0003", "tv", ALL),
    ("tv-pol-0004", "tv", {**ALL, "marketing": False}),
    ("hub-pol-0001", "hub", ALL),
]


async def _campaign(http: aiohttp.ClientSession, name: str) -> str:
    spec = {
        "name": name,
        "cohorts": ["all"],
        "offers": [{**CAMPAIGN_OFFER, "id": f"o-{name}", "surfaces": list(SURFACES.values())}],
    }
    resp = await http.post("/v1/campaigns", json=spec)
    assert resp.status == 201, await resp.text()
    cid: str = (await resp.json())["id"]
    assert (await http.post(f"/v1/campaigns/{cid}/launch")).status == 200
    return cid


async def test_policies_are_enforced_and_explanations_add_up_to_the_audience(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    async with Gateway(settings) as gw, contextlib.AsyncExitStack() as stack:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
            )
        )
        # validation names the field; a campaign's policy cannot set per-device rules
        resp = await http.put("/v1/policies/profile/tv", json={"global_per_day": -1})
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["loc"] == "global_per_day"
        resp = await http.put("/v1/policies/campaign/nope", json={"quiet_hours": []})
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["loc"] == "quiet_hours"
        assert (await http.put("/v1/policies/campaign/nope", json={})).status == 404
        assert (await http.put("/v1/policies/region/x", json={})).status == 400

        shown, capped, held = [await _campaign(http, n) for n in ("shown", "capped", "held")]
        for cid, rules in ((capped, {"campaign_per_day": 0}), (held, {"holdout": 1.0})):
            resp = await http.put(f"/v1/policies/campaign/{cid}", json=rules)
            assert resp.status == 200, await resp.text()
        resp = await http.put("/v1/policies/profile/hub", json={"quiet_hours": ALWAYS_QUIET})
        listing = await resp.json()
        version = listing["version"]
        assert version == 3
        assert listing["cohorts"] == ["all", "profile:hub"]
        actions = [e["action"] for e in await gw.db.call(audit_log)]
        assert actions.count("policy.put") == 3

        agents: list[Agent] = []
        for device, profile, consent in FLEET:
            s = agent_settings(
                gw,
                tmp_path,
                mosquitto,
                device=device,
                profile=profile,
                decisions={"explain_report_s": 3600},  # reported below, by hand
            )
            agent = await stack.enter_async_context(Agent(s))
            await agent.set_consent(consent)
            agents.append(agent)

        async def policies_in_force() -> bool:
            for agent in agents:
                if agent.status()["policy"]["version"] != version or len(agent.parts.offers) < 3:
                    return False
            rows = [await device_view(gw, d) for d, _, _ in FLEET]
            return all(r.get("policy_version") == version for r in rows)

        await eventually(policies_in_force)  # verified, applied, and reported in the birth
        listing = await (await http.get("/v1/policies")).json()
        assert listing["devices_by_version"] == {str(version): len(FLEET)}

        for agent, (_, profile, _) in zip(agents, FLEET, strict=True):
            decision = await agent.decide(SURFACES[profile], 3)
            await agent.decide(SURFACES[profile], 3)
            if profile == "hub":
                assert decision.ranked == []
                assert decision.held_until is not None
            assert all(r.offer.campaign_id == shown for r in decision.ranked)
            assert await agent.parts.explanations.report() == 3
        for agent in agents:
            assert await agent.drain(timeout=20.0)

        async def stats(cid: str) -> dict[str, Any]:
            resp = await http.get(f"/v1/campaigns/{cid}/stats")
            assert resp.status == 200
            explained: dict[str, Any] = (await resp.json())["explanations"]
            return explained

        async def all_reported() -> bool:
            reached = [(await stats(c))["reached"] for c in (shown, capped, held)]
            return reached == [len(FLEET)] * 3

        await eventually(all_reported)
        expected = {
            shown: (3, {"consent": 1, "quiet_hours": 1}),
            capped: (0, {"cap": 4, "consent": 1}),  # capped before quiet hours matter
            held: (0, {"holdout": 3, "consent": 1, "quiet_hours": 1}),
        }
        for cid, (n_shown, n_held) in expected.items():
            got = await stats(cid)
            assert got["shown"] == n_shown
            assert {k: v for k, v in got["held"].items() if v} == n_held
            assert got["shown"] + sum(got["held"].values()) == got["reached"] == len(FLEET)
            assert got["decisions"]["shown"] == 2 * n_shown  # two decisions a device
        assert (await stats(shown))["summary"] == (
            "reached 5 devices; 3 shown; 1 without consent; 1 held by quiet hours"
        )

        # a batch delivered again is stored once: its counts are added once
        before = await stats(capped)
        report = Signal(
            id=new_id(),
            kind=EXPLAIN_KIND,
            at=utcnow(),
            attrs={"campaign_id": capped, "cap": 5, "surface": 2, "future_stage": 1},
        )
        batch = Batch(
            device_id="tv-pol-0009", seq=1, sent_at=utcnow(), agent_version="9", signals=[report]
        )
        assert await gw.db.call(store_batch, "tv-pol-0009", batch, utcnow())
        assert not await gw.db.call(store_batch, "tv-pol-0009", batch, utcnow())
        after = await stats(capped)
        assert after["reached"] == before["reached"] + 1
        assert after["held"]["cap"] == before["held"]["cap"] + 1  # its furthest stage
        assert after["decisions"]["cap"] == before["decisions"]["cap"] + 5
        assert after["decisions"]["surface"] == before["decisions"]["surface"] + 2

        # the policy removed: devices go back to their profile's settings
        resp = await http.delete(f"/v1/policies/campaign/{capped}")
        assert resp.status == 200
        new_version = (await resp.json())["version"]

        async def uncapped() -> bool:
            return all(a.status()["policy"]["version"] == new_version for a in agents)

        await eventually(uncapped)
        decision = await agents[0].decide(SURFACES["tv"], 3)
        assert {r.offer.campaign_id for r in decision.ranked} == {shown, capped}

        # min_score from the cloud: a profile's floor above any model score empties what
        # GET /v1/offers shows; a campaign's floor under it lets that campaign's offers back
        tv = agents[0]

        async def offers_now() -> dict[str, Any]:
            path = f"/v1/offers?surface={SURFACES['tv']}&limit=3&explain=1"
            status, body = await agent_http(tv, "GET", path)
            assert status == 200, body
            assert isinstance(body, dict)
            return body

        before = await offers_now()
        assert {o["campaign_id"] for o in before["offers"]} == {shown, capped}
        assert before["model_version"] is not None  # model scores: the rule applies

        async def put(path: str, rules: dict[str, Any]) -> int:
            resp = await http.put(path, json=rules)
            assert resp.status == 200, await resp.text()
            listing = await resp.json()
            (policy,) = [p for p in listing["policies"] if path.endswith(f"/{p['name']}")]
            assert policy["rules"]["min_score"] == rules["min_score"]  # shown as set
            in_force: int = listing["version"]
            await eventually(lambda: tv.status()["policy"]["version"] == in_force)
            return in_force

        resp = await http.put("/v1/policies/profile/tv", json={"min_score": 1.5})
        assert (await resp.json())["errors"][0]["loc"] == "min_score"
        await put("/v1/policies/profile/tv", {"min_score": 1.0})
        floored = await offers_now()
        assert floored["offers"] == []
        low = {f["offer_id"] for f in floored["filtered"] if f["reason"] == "below_min_score"}
        assert {f"o-{n}" for n in ("shown", "capped")} <= low
        await put(f"/v1/policies/campaign/{capped}", {"min_score": 0.0})
        body = await offers_now()
        assert [o["campaign_id"] for o in body["offers"]] == [capped]
        assert ("o-shown", "below_min_score") in {
            (f["offer_id"], f["reason"]) for f in body["filtered"]
        }
