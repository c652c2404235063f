"""Claims of limited offers against a real Mosquitto and a test-side responder that signs
results with a key of the trust file: idempotent, resent until answered, one per offer."""

from __future__ import annotations

import asyncio

import pytest

from agent.runtime.agent import Agent
from protocol.ids import new_id
from protocol.signing import Signer
from tests.support.agent_world import (
    FakeGateway,
    Responder,
    World,
    claim,
    eventually,
    http,
    offers_json,
    push,
    reasons,
    state,
)
from tests.support.builders import ALL, offer

pytestmark = pytest.mark.integration


async def test_a_claim_is_answered_once_and_repeats_return_the_same_claim(
    world: World, gateway: FakeGateway, responder: Responder
) -> None:
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await push(world, gateway, agent, [offer("lim", limited=True, stock=5), offer("free")])
        status, first = await claim(agent, "lim")
        assert status == 202
        assert first["state"] == "pending"
        await eventually(lambda: agent.counters["claims_granted"] == 1, timeout=10)
        granted = await state(agent, first["id"])
        assert (granted["state"], granted["code"]) == ("granted", "CODE-42")
        status, again = await claim(agent, "lim")  # the same claim, not a second one
        assert (status, again["id"], again["state"]) == (200, first["id"], "granted")
        assert responder.ids() == [first["id"]]
        # a duplicate result (the gateway re-sends until it sees the receipt) changes nothing
        await responder.send(responder.requests[0], granted=False)
        await eventually(lambda: agent.counters["claim_results_duplicate"] == 1)
        assert (await state(agent, first["id"]))["state"] == "granted"
        # not limited, unknown, malformed: refused with reasons
        status, body = await claim(agent, "free")
        assert status == 409 and "not a limited offer" in body["errors"][0]["msg"]
        assert (await claim(agent, "nope"))[0] == 404
        status, body = await http(agent, "POST", "/v1/claims", json={"offer": "lim"})
        assert status == 400
        assert (await http(agent, "GET", "/v1/claims/unknown-claim"))[0] == 404
        assert await agent.drain(timeout=10)
    receipts = [r for b in gateway.batches for r in b.receipts]
    assert f"r-{first['id']}" in receipts


async def test_a_claim_is_resent_until_answered_also_across_a_restart(
    world: World, gateway: FakeGateway, responder: Responder
) -> None:
    responder.answer = None  # the desk is silent: the device keeps asking
    fast = {"decisions": {"claim_resend_s": 0.3}}
    async with Agent(world.settings(fast)) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await push(world, gateway, agent, [offer("flash", limited=True, stock=1)])
        status, first = await claim(agent, "flash")
        assert status == 202
        await eventually(lambda: len(responder.requests) >= 3, timeout=10)
        assert set(responder.ids()) == {first["id"]}  # the idempotency key never changes
    asked = len(responder.requests)
    async with Agent(world.settings(fast)) as agent:
        assert await agent.wait_connected()
        status, again = await claim(agent, "flash")  # after a restart: still the one claim
        assert (status, again["id"], again["state"]) == (200, first["id"], "pending")
        await eventually(lambda: len(responder.requests) > asked, timeout=10)
        # a forged answer (a key the device does not pin) and one for another device: ignored
        forged = Signer.generate("k1")
        await responder.send(responder.requests[-1], granted=True, signer=forged)
        await responder.send(responder.requests[-1], granted=True, device_id="tv-someone-else")
        await eventually(lambda: agent.counters["claim_results_bad"] == 2)
        assert (await state(agent, first["id"]))["state"] == "pending"
        responder.answer = "sold_out"
        await eventually(lambda: agent.counters["claims_refused"] == 1, timeout=10)
        refused = await state(agent, first["id"])
        assert (refused["state"], refused["reason"]) == ("refused", "sold_out")
        # the refused offer is no longer offered; the resending stops
        body = await offers_json(agent)
        assert reasons(body)["flash"] == "claim_refused"
        settled = len(responder.requests)
        await asyncio.sleep(1.0)
        assert len(responder.requests) == settled
    assert set(responder.ids()) == {first["id"]}


async def test_claims_survive_a_restart_without_a_new_request_id(
    world: World, gateway: FakeGateway, responder: Responder
) -> None:
    """One claim per offer per device: the stored row, not memory, decides."""
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await push(world, gateway, agent, [offer("one", limited=True)])
        responder.answer = None
        _, first = await claim(agent, "one")
    responder.answer = "granted"
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await eventually(lambda: agent.counters["claims_granted"] == 1, timeout=15)
        assert (await state(agent, first["id"]))["state"] == "granted"
    assert set(responder.ids()) == {first["id"]}
    assert new_id() != first["id"]
