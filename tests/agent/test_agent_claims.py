"""Claims of limited offers against a real Mosquitto and a test-side responder that signs
results with a key of the trust file: idempotent, resent until answered, one per offer."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiomqtt
import pytest

from agent.runtime.agent import Agent
from protocol import codec
from protocol.envelopes import ClaimRequest
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from tests.agent.test_agent_decisions import offer, offers_json, push, reasons
from tests.agent.test_agent_loop import ALL, FakeGateway, World, eventually, gateway, http, world

pytestmark = pytest.mark.integration
__all__ = ["gateway", "world"]  # fixtures, imported for pytest


class Responder:
    """Plays the gateway's claim desk: records every `up/claim`, answers when told to."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.requests: list[ClaimRequest] = []
        self.answer: str | None = "granted"  # "granted", "sold_out", or None (stay silent)
        self.signer = world.signer
        self.client: aiomqtt.Client | None = None

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.world.broker.port, identifier=f"claims-{uuid.uuid4().hex[:8]}"
        ) as client:
            self.client = client
            await client.subscribe(f"{self.world.root}/dev/+/up/claim", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                request = codec.decode(message.payload, ClaimRequest)
                self.requests.append(request)
                if self.answer is not None:
                    await self.send(request, granted=self.answer == "granted")

    def result(self, request: ClaimRequest, *, granted: bool, **kw: Any) -> dict[str, Any]:
        now = utcnow()
        body: dict[str, Any] = {
            "v": 1,
            "id": f"r-{request.id}",
            "claim_id": request.id,
            "device_id": request.device_id,
            "offer_id": request.offer_id,
            "granted": granted,
            "code": "CODE-42" if granted else None,
            "reason": "" if granted else "sold_out",
            "issued_at": format_time(now),
            "expires_at": format_time(now + timedelta(hours=1)),
        }
        body.update(kw)
        return body

    async def send(
        self, request: ClaimRequest, *, granted: bool, signer: Signer | None = None, **kw: Any
    ) -> None:
        assert self.client is not None
        body = {
            k: v for k, v in self.result(request, granted=granted, **kw).items() if v is not None
        }
        signed = (signer or self.signer).sign(body)
        topic = f"{self.world.root}/dev/{request.device_id}/down/claim"
        await self.client.publish(topic, codec.dumps(signed), qos=1)

    def ids(self) -> list[str]:
        return [r.id for r in self.requests]


@pytest.fixture
async def responder(world: World) -> AsyncIterator[Responder]:
    desk = Responder(world)
    ready = asyncio.Event()
    task = asyncio.create_task(desk.run(ready), name="claim-responder")
    await asyncio.wait_for(ready.wait(), 10)
    yield desk
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def claim(agent: Agent, offer_id: str) -> tuple[int, Any]:
    return await http(agent, "POST", "/v1/claims", json={"offer_id": offer_id})


async def state(agent: Agent, claim_id: str) -> dict[str, Any]:
    status, body = await http(agent, "GET", f"/v1/claims/{claim_id}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


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
