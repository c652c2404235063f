"""A newer gateway's messages reach an agent already in the field: the fields it does not know
are covered by the signature, ignored and counted; changed after signing, the message is
refused. Real keys, the real codec, real SQLite; the last test through a real Mosquitto."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.link.commands import Commands
from agent.offers.book import OfferBook
from agent.runtime.agent import Agent
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from protocol import codec
from protocol.envelopes import Command
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer, Verifier
from tests.support.agent_world import (
    FakeGateway,
    Responder,
    World,
    claim,
    eventually,
    http,
    push,
    state,
)
from tests.support.builders import ALL, offer

SIGNER = Signer.generate("k1")
VERIFIER = Verifier.from_public_keys([SIGNER.public])


def newer_bundle() -> dict[str, Any]:
    """A device bundle as a later gateway might send it: one new field at each level."""
    now = utcnow()
    offers = [
        offer("o-1", badge={"text": "new"}, targeting={"profiles": ["tv"], "min_household": 2}),
        offer("o-2"),
    ]
    body = {
        "v": 1,
        "id": new_id(),
        "issued_at": format_time(now),
        "expires_at": format_time(now + timedelta(hours=1)),
        "offers": offers,
        "channel": "beta",
    }
    return SIGNER.sign(body)


async def test_a_bundle_with_unknown_fields_is_accepted_intact_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "agent.sqlite3")
    await store.open()
    metrics = Metrics()
    book = OfferBook(VERIFIER, store, metrics)
    signed = newer_bundle()
    forged = json.loads(json.dumps(signed))
    forged["offers"][0]["badge"]["text"] = "free TV"
    verdict = await book.handle("offers", "tv-0001", codec.encode_dict(forged))
    assert (verdict.outcome, verdict.reason) == ("rejected", "bad_signature")
    assert len(book) == 0

    verdict = await book.handle("offers", "tv-0001", codec.encode_dict(signed))
    assert verdict.accepted
    assert verdict.refused == ()
    held = book.get("o-1")
    assert held is not None
    assert (held.title, held.price, held.discount) == ("Offer o-1", 20.0, 0.1)
    assert held.targeting is not None
    assert held.targeting.profiles == ["tv"]
    assert len(book) == 2
    assert metrics.counters["downlink_unknown_fields"] == 3  # channel, badge, min_household
    assert metrics.counters["bundles_rejected"] == 1

    again = OfferBook(VERIFIER, store, Metrics())
    await again.load()
    assert again.get("o-1") == held
    await store.close()


async def test_a_command_with_unknown_fields_is_obeyed_once_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "agent.sqlite3")
    await store.open()
    metrics = Metrics()
    forgotten: list[dict[str, int]] = []

    async def on_forget(removed: dict[str, int]) -> None:
        forgotten.append(removed)

    commands = Commands("tv-0001", store, VERIFIER, metrics, on_forget=on_forget)
    now = utcnow()
    body = Command(
        id="forget-1",
        device_id="tv-0001",
        kind="forget",
        issued_at=now,
        expires_at=now + timedelta(hours=1),
    ).to_wire()
    signed = SIGNER.sign({**body, "scope": {"keep": ["consent"]}, "legal_basis": "art17"})
    assert not await commands.handle(codec.encode_dict({**signed, "legal_basis": "none"}))
    assert metrics.counters["commands_bad"] == 1
    assert not forgotten

    with caplog.at_level(logging.DEBUG, logger="agent.link.downlink"):
        assert await commands.handle(codec.encode_dict(signed))
        assert await commands.handle(codec.encode_dict(signed))  # re-sent: confirmed again
    assert len(forgotten) == 1
    assert metrics.counters["commands_applied"] == 1
    assert metrics.counters["commands_duplicate"] == 1
    assert metrics.counters["downlink_unknown_fields"] == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.link.downlink"]
    assert len(lines) == 1
    assert "Command" in lines[0]
    assert "scope" in lines[0]
    await store.close()


@pytest.mark.integration
async def test_acks_and_claim_results_of_a_newer_gateway_work_through_the_broker(
    world: World, gateway: FakeGateway, responder: Responder
) -> None:
    gateway.auto_ack = False
    responder.answer = None
    async with Agent(world.settings()) as agent:
        assert await agent.wait_connected()
        await agent.set_consent(ALL)
        await agent.accept_signals([{"kind": "search"}] * 2)
        await eventually(lambda: len(gateway.batches) == 1)
        ack = {
            "v": 1,
            "acks": [gateway.batches[0].seq],
            "device_id": world.device,
            "expires_at": format_time(utcnow() + timedelta(hours=1)),
            "stored_in": "eu-1",
            "hint": {"s": 30},
        }
        assert gateway.client is not None
        topic = f"{world.root}/dev/{world.device}/down/ack"
        await gateway.client.publish(topic, codec.dumps(world.signer.sign(ack)), qos=1)
        assert await agent.drain(timeout=5)  # the rows left the device: the ack was obeyed
        # (counted by the ack handler once the store's transaction returns: wait for it)
        await eventually(lambda: agent.counters["signals_acked"] == 2)
        assert agent.counters["messages_bad"] == 0
        assert agent.counters["downlink_unknown_fields"] == 2
        gateway.auto_ack = True

        await push(world, gateway, agent, [offer("lim", limited=True, stock=5)])
        status, started = await claim(agent, "lim")
        assert status == 202
        await eventually(lambda: len(responder.requests) == 1, timeout=10)
        await responder.send(responder.requests[0], granted=True, pickup={"store": "s-9"})
        await eventually(lambda: agent.counters["claims_granted"] == 1)
        granted = await state(agent, started["id"])
        assert (granted["state"], granted["code"]) == ("granted", "CODE-42")
        assert agent.counters["downlink_unknown_fields"] == 3
        status, text = await http(agent, "GET", "/metrics")
        assert "edgemart_agent_downlink_unknown_fields_total 3.0" in text
