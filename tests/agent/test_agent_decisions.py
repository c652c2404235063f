"""Decisions through the running agent: caps, quiet hours, holdout, outcomes with features,
attribution, bad offers and refused models; real Mosquitto, SQLite, HTTP and onnxruntime."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.runtime.agent import Agent
from protocol import codec
from protocol.assign import in_holdout
from protocol.envelopes import State
from protocol.ids import format_time, utcnow
from tests.support.agent_world import (
    FakeGateway,
    World,
    http,
    offers_json,
    push,
    reasons,
)
from tests.support.builders import (
    ALL,
    SURFACE,
    manifest_for,
    offer,
    onnx_bytes,
    spec_dict,
    write_model,
)

pytestmark = pytest.mark.integration


async def post_outcome(agent: Agent, offer_id: str, kind: str) -> tuple[int, Any]:
    return await http(
        agent, "POST", "/v1/outcomes", json={"offer_id": offer_id, "kind": kind, "surface": SURFACE}
    )


def local_hhmm(world: World, minutes: int) -> str:
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    moment = (utcnow() + timedelta(minutes=minutes)).astimezone(ZoneInfo("Asia/Shanghai"))
    return moment.strftime("%H:%M")


async def test_caps_hold_per_offer_and_globally_and_survive_a_restart(
    world: World, gateway: FakeGateway
) -> None:
    caps = {"decisions": {"global_per_day": 3}}
    async with Agent(world.settings(caps)) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await push(
            world,
            gateway,
            agent,
            [offer("a", caps={"per_day": 1}, discount=0.9), offer("b"), offer("c")],
        )
        body = await offers_json(agent)
        assert {o["id"] for o in body["offers"]} == {"a", "b", "c"}
        assert (await post_outcome(agent, "a", "impression"))[0] == 202
        body = await offers_json(agent)
        assert {o["id"] for o in body["offers"]} == {"b", "c"}
        assert reasons(body)["a"] == "cap_offer_day"
        for oid in ("b", "c"):
            assert (await post_outcome(agent, oid, "impression"))[0] == 202
        body = await offers_json(agent)
        assert body["offers"] == []
        assert set(reasons(body).values()) <= {"cap_offer_day", "cap_global_day"}
        assert reasons(body)["b"] == "cap_global_day"
    async with Agent(world.settings(caps)) as agent:  # the day's counts are on disk
        assert await agent.wait_connected()
        assert (await offers_json(agent))["offers"] == []
        assert agent.caps.total == 3
        assert await agent.drain(timeout=10)


async def test_quiet_hours_hold_offers_until_they_end(world: World, gateway: FakeGateway) -> None:
    quiet = {
        "decisions": {
            "quiet_hours": [{"start": local_hhmm(world, -30), "end": local_hhmm(world, 60)}]
        }
    }
    async with Agent(world.settings(quiet)) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await push(world, gateway, agent, [offer("q1"), offer("q2")])
        body = await offers_json(agent)
        assert body["offers"] == []
        assert reasons(body) == {"q1": "quiet_hours", "q2": "quiet_hours"}
        held = body["held_until"]
        assert format_time(utcnow() + timedelta(minutes=55)) < held
        assert held < format_time(utcnow() + timedelta(minutes=61))
        assert len(agent.offers or []) == 2  # held, not dropped
        decision = await agent.decide(SURFACE, explain=True)  # the agent keeps deciding
        assert decision.ranked == []
        assert dict(decision.filtered) == {"q1": "quiet_hours", "q2": "quiet_hours"}
        agent.quiet = ()  # the quiet period is over: the same offers are shown
        body = await offers_json(agent)
        assert {o["id"] for o in body["offers"]} == {"q1", "q2"}


async def test_a_holdout_device_logs_a_counterfactual_impression_and_shows_nothing_of_it(
    world: World, gateway: FakeGateway
) -> None:
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        assert in_holdout(world.device, "c-h", 1.0)
        assert not in_holdout(world.device, "c-h", 0.0)
        await push(
            world,
            gateway,
            agent,
            [offer("h", campaign_id="c-h", holdout=1.0, discount=0.9), offer("x")],
        )
        body = await offers_json(agent)
        assert [o["id"] for o in body["offers"]] == ["x"]
        assert reasons(body)["h"] == "holdout"
        await offers_json(agent)  # again: one counterfactual per offer and surface per gap
        assert agent.counters["counterfactual_impressions"] == 1
        assert await agent.drain(timeout=10)
    outcomes = [o for b in gateway.batches for o in b.outcomes]
    assert len(outcomes) == 1
    ghost = outcomes[0]
    assert (ghost.offer_id, ghost.kind, ghost.counterfactual) == ("h", "impression", True)
    assert ghost.score is not None and ghost.model_version == agent.model_version
    assert ghost.features is not None and len(ghost.features) >= 20


async def test_outcomes_carry_score_version_variant_features_and_conversions_are_attributed(
    world: World, gateway: FakeGateway
) -> None:
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await push(world, gateway, agent, [offer("p", variant="b"), offer("never")])
        body = await offers_json(agent, limit=1)
        shown = body["offers"][0]
        other = "never" if shown["id"] == "p" else "p"
        status, clicked = await post_outcome(agent, shown["id"], "click")
        assert status == 202
        status, converted = await post_outcome(agent, shown["id"], "conversion")
        assert status == 202
        assert converted["attributed_to"] == {"id": clicked["id"], "kind": "click"}
        # a conversion of a campaign the household never saw is not the campaign's
        status, missed = await post_outcome(agent, other, "conversion")
        assert status == 200
        assert missed["id"] is None and "no click of campaign" in missed["reason"]
        assert agent.counters["conversions_unattributed"] == 1
        assert await agent.drain(timeout=10)
    outcomes = {o.kind: o for b in gateway.batches for o in b.outcomes}
    assert set(outcomes) == {"click", "conversion"}
    for o in outcomes.values():
        assert o.offer_id == shown["id"]
        assert o.score == pytest.approx(shown["score"])
        assert o.model_version == agent.model_version
        assert o.variant == ("b" if shown["id"] == "p" else "a")
        assert o.features is not None and len(o.features) >= 20
    assert outcomes["conversion"].features == outcomes["click"].features


async def test_bad_offers_are_refused_or_ineligible_with_reasons(
    world: World, gateway: FakeGateway
) -> None:
    now = utcnow()
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await push(
            world,
            gateway,
            agent,
            [
                offer("ok"),
                offer("five-hundred-percent", discount=5.0),
                offer("negative", price=-3.0),
                offer("no-title", title=None),
                offer("alien", category="spaceships"),
                offer("soon", starts_at=format_time(now + timedelta(hours=2))),
                offer(
                    "gone",
                    expires_at=format_time(now - timedelta(minutes=1)),
                    starts_at=format_time(now - timedelta(hours=1)),
                ),
                offer("sold", limited=True, stock=0),
                offer("elsewhere", surfaces=["tv_screensaver"]),
            ],
        )
        assert agent.counters["offers_rejected"] == 3
        body = await offers_json(agent)
        assert [o["id"] for o in body["offers"]] == ["ok"]
        assert reasons(body) == {
            "alien": "unknown_category",
            "soon": "not_started",
            "gone": "expired",
            "sold": "sold_out",
            "elsewhere": "wrong_surface",
        }
        assert all(o["reasons"] and isinstance(o["score"], float) for o in body["offers"])


async def test_a_model_the_agent_cannot_serve_is_refused_and_the_previous_one_stays(
    world: World, tmp_path: Path
) -> None:
    async with Agent(world.settings()) as agent:
        # (closing an agent whose link is still connecting can hang in aiomqtt: wait for it)
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        before = agent.model
        assert before is not None
        # corrupt bytes whose size and sha256 match their manifest
        junk = b"\x08\x07 not an onnx graph" * 10
        corrupt = tmp_path / "corrupt.onnx"
        corrupt.write_bytes(junk)
        spec = spec_dict(["offer.discount", "offer.priority"])
        assert not await agent.replace_model(corrupt, manifest_for(junk, spec, version=2))
        assert "corrupt model file" in (agent.last_model_error or "")
        # a valid graph three features wide, a spec listing two
        data = onnx_bytes([1.0, 1.0, 1.0])
        wide = tmp_path / "wide.onnx"
        wide.write_bytes(data)
        assert not await agent.replace_model(wide, manifest_for(data, spec, version=3))
        assert "width mismatch" in (agent.last_model_error or "")
        # a spec naming a feature this agent does not compute
        path, manifest = write_model(tmp_path, ["offer.discount", "user.horoscope"], [1.0, 1.0])
        assert not await agent.replace_model(path, manifest)
        assert "unknown feature 'user.horoscope'" in (agent.last_model_error or "")
        assert agent.counters["models_rejected"] == 3
        assert agent.model is before
        status, state = await http(agent, "GET", "/v1/status")
        assert (status, state["model_version"]) == (200, before.version)
        # and a servable one is taken
        path, manifest = write_model(tmp_path, ["offer.discount"], [2.0], version=9)
        assert await agent.replace_model(path, manifest)
        assert agent.model_version == 9


class _Exploding:
    """A session that fails at run time (as onnxruntime does on a bad kernel or input)."""

    def run(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("kernel failed")


async def test_a_model_failing_at_run_time_is_rolled_back_to_the_last_good_one(
    world: World, gateway: FakeGateway
) -> None:
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await push(world, gateway, agent, [offer("a"), offer("b")])
        good = agent.model
        assert good is not None
        broken = dataclasses.replace(good, version=7, sha256="f" * 64, session=_Exploding())
        agent._swap_model(broken)  # as the updater does after a passed health check
        assert agent.model_version == 7
        body = await offers_json(agent)
        assert [o["id"] for o in body["offers"]]  # still ranked, by the last good model
        assert all(f"model:v{good.version}" in o["reasons"] for o in body["offers"])
        assert agent.model is good
        assert agent.counters["model_rollbacks"] == 1
        assert agent.model_updates is not None
        assert agent.model_updates.refused == {(7, "f" * 64): "runtime_failed"}
        # the retained state tells the gateway
        topic = f"{world.root}/dev/{world.device}/state"

        async def reported() -> State:
            async with aiomqtt.Client("127.0.0.1", world.broker.port) as client:
                await client.subscribe(topic, qos=1)
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    return codec.decode(message.payload, State)
            raise AssertionError("no state")

        async def rolled_back() -> State:
            while True:
                state = await asyncio.wait_for(reported(), 5)
                if state.model_update is not None:
                    return state
                await asyncio.sleep(0.05)

        state = await asyncio.wait_for(rolled_back(), 15)
        assert state.model_update is not None
        assert (state.model_update.version, state.model_update.status) == (7, "rolled_back")
        assert state.model_update.running == good.version
        assert state.model_version == good.version


async def test_an_outcome_recorded_after_analytics_withdrawal_never_leaves(
    world: World, gateway: FakeGateway
) -> None:
    """Through the local API: consent withdrawn, an outcome recorded, consent granted again;
    the outcome is counted as withdrawn and no batch ever carries it."""
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        status, _ = await http(agent, "PUT", "/v1/consent", json={"purposes": ALL})
        assert status == 200
        await push(world, gateway, agent, [offer("w1"), offer("w2")])
        status, before = await post_outcome(agent, "w1", "impression")
        assert status == 202
        assert await agent.drain(timeout=10)
        withdrawn = {**ALL, "analytics": False}
        status, _ = await http(agent, "PUT", "/v1/consent", json={"purposes": withdrawn})
        assert status == 200
        hidden: list[str] = []
        for oid, kind in (("w1", "click"), ("w2", "impression"), ("w2", "dismiss")):
            status, body = await post_outcome(agent, oid, kind)
            assert status == 202, body
            hidden.append(body["id"])
        assert agent.status()["outbox_depth"] == 0
        assert agent.store.drops["outcomes_withdrawn"] == 3
        status, _ = await http(agent, "PUT", "/v1/consent", json={"purposes": ALL})
        assert status == 200
        status, after = await post_outcome(agent, "w2", "click")
        assert status == 202
        assert await agent.drain(timeout=10)
    sent = [o.id for b in gateway.batches for o in b.outcomes]
    assert before["id"] in sent and after["id"] in sent
    assert not set(hidden) & set(sent), "an outcome recorded after the withdrawal left"


async def test_a_profiles_minimum_score_keeps_low_scored_offers_off_the_surface(
    world: World, gateway: FakeGateway, tmp_path: Path
) -> None:
    """`decisions.min_score` from the settings reaches the running agent's decisions: an offer
    its model scores below it is filtered `below_min_score`; one above is shown."""
    async with Agent(world.settings({"decisions": {"min_score": 0.5}})) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        path, manifest = write_model(tmp_path, ["offer.discount"], [8.0], bias=-4.0, version=5)
        assert await agent.replace_model(path, manifest)
        await push(
            world,
            gateway,
            agent,
            [
                offer("hi", campaign_id="c-hi", discount=0.9),
                offer("lo", campaign_id="c-lo", discount=0.1),
            ],
        )
        body = await offers_json(agent)
        assert [o["id"] for o in body["offers"]] == ["hi"]
        assert body["offers"][0]["score"] >= 0.5
        assert reasons(body)["lo"] == "below_min_score"
        assert await agent.drain(timeout=10)
