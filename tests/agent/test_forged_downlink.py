"""Issue 14, item 5: on an open broker (no ACL, as in the quick start), a forged ack and a
genuinely signed but older cohort catalog change nothing on the device."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from agent.runtime.agent import Agent
from protocol import codec
from protocol.ids import format_time, utcnow
from protocol.signing import Signer
from tests.support.agent_world import FakeGateway, World, eventually
from tests.support.builders import ALL, signed_ack


async def test_forged_acks_delete_nothing_and_a_genuine_one_does(
    world: World, gateway: FakeGateway
) -> None:
    gateway.auto_ack = False
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await agent.accept_signals([{"kind": "search"}] * 50)
        await eventually(lambda: len(gateway.batches) >= 1)
        seqs = gateway.seqs()
        held = agent.store.depth
        assert held > 0
        outbox = agent.store.outbox_id
        topic = f"{world.root}/dev/{world.device}/down/ack"
        now = utcnow()
        genuine = world.signer.sign(
            {
                "v": 1,
                "acks": seqs,
                "outbox_id": outbox,
                "device_id": world.device,
                "expires_at": format_time(now + timedelta(hours=1)),
            }
        )
        tampered = {**genuine, "acks": [*seqs, 99]}
        expired = world.signer.sign({**genuine, "expires_at": format_time(now - timedelta(1))})
        forged = [
            codec.dumps({"v": 1, "acks": seqs, "outbox_id": outbox}),  # the old, unsigned form
            signed_ack(Signer.generate("k1"), world.device, seqs, outbox),  # someone else's key
            signed_ack(world.signer, "tv-someone-else", seqs, outbox),  # another device's ack
            codec.dumps(tampered),
            codec.dumps(expired),
        ]
        assert gateway.client is not None
        for payload in forged:  # any client on an open broker can publish these
            await gateway.client.publish(topic, payload, qos=1)
        await eventually(lambda: agent.counters["acks_forged"] == len(forged))
        assert agent.store.depth == held  # nothing left the device
        assert agent.counters["batches_acked"] == 0
        assert agent.counters["signals_acked"] == 0

        await gateway.client.publish(topic, codec.dumps(genuine), qos=1)
        assert await agent.drain(timeout=5)
        await eventually(lambda: agent.counters["signals_acked"] == 50)
        assert agent.counters["acks_forged"] == len(forged)


async def test_an_older_catalog_never_seen_cannot_replace_the_newer_one(
    world: World, gateway: FakeGateway
) -> None:
    # both genuinely signed; the older one was retained yesterday and kept by an attacker
    older = world.bundle(["old-1", "old-2"], cohort="profile:tv")
    await asyncio.sleep(0.01)
    newer = world.bundle(["new-1"], cohort="profile:tv")
    topic = "cohort/profile:tv/offers"
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await gateway.publish(topic, newer, retain=True)
        await eventually(lambda: agent.counters["bundles_verified"] == 1)
        await gateway.publish(topic, older, retain=True)  # replayed, and left retained
        await eventually(lambda: agent.counters["catalogs_rolled_back"] == 1)
        assert {o.id for o in agent.parts.offers.offers()} == {"new-1"}
    # a restart: the broker hands the older catalog out again, the device still refuses it
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await eventually(lambda: agent.counters["catalogs_rolled_back"] == 1)
        assert {o.id for o in agent.parts.offers.offers()} == {"new-1"}
        assert agent.counters["bundles_verified"] == 0
